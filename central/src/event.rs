//! The event model: turning an agent's `event.create` trigger into an event in xMatters' JSON
//! shape, and the status values REST may set.
//!
//! Validation lives here, apart from storage and transport, so the websocket path and any future
//! REST creation path refuse the same triggers for the same reasons.

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The lifecycle states of an xMatters event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Notifications are (or would be) going out; every new event starts here.
    Active,
    /// Paused by an operator; may be resumed.
    Suspended,
    /// Ended; final.
    Terminated,
}

impl Status {
    /// Parse a status case-insensitively, as xMatters accepts `active` as well as `ACTIVE`.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_uppercase().as_str() {
            "ACTIVE" => Some(Self::Active),
            "SUSPENDED" => Some(Self::Suspended),
            "TERMINATED" => Some(Self::Terminated),
            _ => None,
        }
    }

    /// The wire spelling (upper case), used in stored events and REST answers.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Suspended => "SUSPENDED",
            Self::Terminated => "TERMINATED",
        }
    }
}

/// Why a trigger cannot become an event. Every variant is permanent: resending the same
/// trigger cannot succeed, so the agent dead-letters it (`reject{retryable:false, status:400}`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    /// The trigger is not a JSON object.
    #[error("trigger must be a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// `priority` is not one of LOW, MEDIUM, HIGH.
    #[error("trigger.priority must be one of LOW, MEDIUM, HIGH, got {0}")]
    BadPriority(String),
    /// `properties` is present but not an object.
    #[error("trigger.properties must be a JSON object, got {0}")]
    BadProperties(&'static str),
}

/// The identity and provenance of an event, filled in by the central (never by the trigger).
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    /// The new event's UUID (both `id` and `eventId`).
    pub event_id: &'a str,
    /// The inbound request at the agent that produced the event.
    pub request_id: &'a str,
    /// The agent that relayed it.
    pub agent_id: &'a str,
    /// The integration that handled the request.
    pub integration_id: &'a str,
    /// The form the event is created from, if any.
    pub form: Option<&'a str>,
    /// The communication plan the integration names, if any (`plan: {name}`; without it the
    /// trigger's own `plan` member is kept).
    pub plan: Option<&'a str>,
    /// Whether the integration enables notification flood control (`floodControl`).
    pub flood_control: bool,
    /// Why the alert rate filter suppressed the event (`suppressed: {rule, reason}`); the member
    /// is absent for events that were not suppressed.
    pub suppressed: Option<&'a str>,
    /// Creation time, RFC 3339 UTC.
    pub created: &'a str,
}

/// A trigger read from JSON text in one pass, without building a value tree.
///
/// Every value is re-written as canonical JSON (what serde_json writes for the same `Value`,
/// members in arrival order), so the event can be assembled from slices of text: this runs for
/// every event the central receives, and materializing the trigger as a `Value`, cloning it and
/// serializing it again cost more than the rest of the ingest path bar sled. Reading goes
/// through `deserialize_any`, like parsing into a `Value`, so exactly the same inputs are
/// accepted (number range, string escapes, nesting limit counted from the enclosing document).
/// A key repeated in a nested object keeps its last value, as in a `Value`, while reading; at
/// the top level [`check`] resolves repeats.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// The canonical JSON of the members' keys (quoted and escaped) and values, back to back.
    text: Vec<u8>,
    /// The members of an object trigger in arrival order (a repeated key is resolved by
    /// [`check`]), or the JSON kind of any other trigger.
    members: Result<Vec<Member>, &'static str>,
}

/// One top-level member of a trigger: byte ranges of its key and value in [`Trigger::text`].
#[derive(Debug, Clone)]
struct Member {
    key: Range<usize>,
    value: Range<usize>,
}

/// Run `seed` over the whole of `text`: one JSON value, nothing but whitespace after it.
pub(crate) fn parse_whole<'de, S: DeserializeSeed<'de>>(
    text: &'de str,
    seed: S,
) -> Result<S::Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let value = seed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

impl Trigger {
    /// Read a trigger from JSON text.
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        parse_whole(
            text,
            TriggerSeed {
                capacity: text.len(),
            },
        )
    }

    /// Read a trigger from a `Value` (the same path as [`Trigger::parse`], without text).
    pub fn from_value(value: &Value) -> Result<Self, serde_json::Error> {
        Self::deserialize(value)
    }

    fn slice(&self, range: &Range<usize>) -> &[u8] {
        self.text.get(range.clone()).unwrap_or_default()
    }
}

/// The keys the central fills in itself; a trigger member with one of these names never reaches
/// the event as it is (some are read: see [`build`]). Compared as canonical JSON keys.
const OWNED: [&[u8]; 15] = [
    b"\"id\"",
    b"\"eventId\"",
    b"\"status\"",
    b"\"priority\"",
    b"\"properties\"",
    b"\"recipients\"",
    b"\"form\"",
    b"\"plan\"",
    b"\"requestId\"",
    b"\"created\"",
    b"\"floodControl\"",
    b"\"suppressed\"",
    b"\"links\"",
    b"\"integrationId\"",
    b"\"agentId\"",
];

/// Check a trigger and build the event JSON from it: [`check`], then [`Checked::to_json`].
///
/// Fields the trigger carries that the central does not interpret (`responses`, `conferences`,
/// `expirationInMinutes`, ...) are kept as they are; fields the central owns (`id`, `status`,
/// `created`, `links`, ...) are always the central's, whatever the trigger says. `null` for
/// `priority` or `properties` counts as absent. Of repeated keys the last counts, as in a
/// `Value`. Returns the event as JSON text; keys are unique at every level.
pub fn build(trigger: &Trigger, origin: &Origin<'_>) -> Result<Vec<u8>, TriggerError> {
    check(trigger).map(|checked| checked.to_json(origin))
}

/// A trigger that passed [`check`]: what [`Checked::to_json`] needs, borrowed from the trigger.
#[derive(Debug)]
pub struct Checked<'t> {
    /// The members the event keeps as they are: the last of each key, none the central owns.
    kept: Vec<(&'t [u8], &'t [u8])>,
    priority: &'static str,
    properties: &'t [u8],
    recipients: &'t [u8],
    plan: &'t [u8],
    /// The canonical text's length, to size the event.
    size: usize,
}

/// Validate a trigger (the first half of [`build`]). The split lets the store give the event its
/// id only once it knows the event is new, while invalid triggers are still refused first.
pub fn check(trigger: &Trigger) -> Result<Checked<'_>, TriggerError> {
    let members = match &trigger.members {
        Ok(members) => members,
        Err(kind) => return Err(TriggerError::NotAnObject(kind)),
    };
    // The last member of each key, in key order (a stable sort keeps arrival order among
    // repeats, so the last of a run is the last sent).
    let mut sorted: Vec<(&[u8], &[u8])> = members
        .iter()
        .map(|member| (trigger.slice(&member.key), trigger.slice(&member.value)))
        .collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let mut last: Vec<(&[u8], &[u8])> = Vec::with_capacity(sorted.len());
    for (key, value) in sorted {
        match last.last_mut() {
            Some(previous) if previous.0 == key => *previous = (key, value),
            _ => last.push((key, value)),
        }
    }
    let member = |name: &[u8]| {
        last.iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| *value)
            .filter(|value| *value != b"null")
    };

    let priority = match member(b"\"priority\"") {
        None => "MEDIUM",
        Some(value) if value.first() == Some(&b'"') => {
            let text: String = serde_json::from_slice(value).unwrap_or_default();
            match text.to_ascii_uppercase().as_str() {
                "LOW" => "LOW",
                "MEDIUM" => "MEDIUM",
                "HIGH" => "HIGH",
                _ => {
                    return Err(TriggerError::BadPriority(format!(
                        "\"{}\"",
                        truncate(&text)
                    )))
                }
            }
        }
        Some(other) => {
            return Err(TriggerError::BadPriority(
                server::http_util::json_text_kind(other).to_owned(),
            ))
        }
    };
    let properties: &[u8] = match member(b"\"properties\"") {
        None => b"{}",
        Some(value) if value.first() == Some(&b'{') => value,
        Some(other) => {
            return Err(TriggerError::BadProperties(
                server::http_util::json_text_kind(other),
            ))
        }
    };
    let recipients = member(b"\"recipients\"").unwrap_or(b"[]");
    let plan = member(b"\"plan\"").unwrap_or(b"null");
    let kept = last
        .iter()
        .filter(|(key, _)| !OWNED.contains(key))
        .copied()
        .collect();
    Ok(Checked {
        kept,
        priority,
        properties,
        recipients,
        plan,
        size: trigger.text.len(),
    })
}

impl Checked<'_> {
    /// The trigger's `recipients` as JSON text (`[]` when absent), for notifications.
    pub fn recipients(&self) -> &[u8] {
        self.recipients
    }

    /// The event JSON for this trigger and origin (the second half of [`build`]).
    pub fn to_json(&self, origin: &Origin<'_>) -> Vec<u8> {
        let mut event = Object(Vec::with_capacity(self.size + 512));
        for (key, value) in &self.kept {
            event.member(key, value);
        }
        event.string("id", origin.event_id);
        event.string("eventId", origin.event_id);
        event.string("status", Status::Active.as_str());
        event.string("priority", self.priority);
        event.raw("properties", self.properties);
        event.raw("recipients", self.recipients);
        match origin.form {
            Some(name) => {
                event.raw("form", b"{");
                event.string("name", name);
                event.0.push(b'}');
            }
            None => event.raw("form", b"null"),
        }
        match origin.plan {
            Some(name) => {
                event.raw("plan", b"{");
                event.string("name", name);
                event.0.push(b'}');
            }
            None => event.raw("plan", self.plan),
        }
        event.string("requestId", origin.request_id);
        event.string("created", origin.created);
        let flood: &[u8] = if origin.flood_control {
            b"true"
        } else {
            b"false"
        };
        event.raw("floodControl", flood);
        if let Some(reason) = origin.suppressed {
            event.raw("suppressed", b"{");
            event.string("rule", "Alert Rate Filter");
            event.string("reason", reason);
            event.0.push(b'}');
        }
        event.raw("links", b"{");
        event.string("self", format_args!("/api/xm/1/events/{}", origin.event_id));
        event.0.push(b'}');
        event.string("integrationId", origin.integration_id);
        event.string("agentId", origin.agent_id);
        event.0.push(b'}');
        event.0
    }
}

/// JSON object text being written member by member (closing braces are the caller's).
struct Object(Vec<u8>);

impl Object {
    /// A member whose key is already JSON text (quoted and escaped).
    fn member(&mut self, key: &[u8], value: &[u8]) {
        self.separator();
        self.0.extend_from_slice(key);
        self.0.push(b':');
        self.0.extend_from_slice(value);
    }

    /// A member named by a plain identifier, its value JSON text (or the opening of one).
    fn raw(&mut self, name: &str, value: &[u8]) {
        self.separator();
        self.name(name);
        self.0.extend_from_slice(value);
    }

    /// A member whose value is a string (`&str` or `format_args!`), escaped by serde_json.
    fn string(&mut self, name: &str, value: impl Serialize) {
        self.separator();
        self.name(name);
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.0, &value);
    }

    fn name(&mut self, name: &str) {
        self.0.push(b'"');
        self.0.extend_from_slice(name.as_bytes());
        self.0.extend_from_slice(b"\":");
    }

    /// `{` before the first member, `,` between members.
    fn separator(&mut self) {
        match self.0.last() {
            None => self.0.push(b'{'),
            Some(b'{') => {}
            Some(_) => self.0.push(b','),
        }
    }
}

/// Where [`Trigger`] deserialization writes: the canonical text, and a stack of the members
/// (key and value ranges) of the nested objects being read, to resolve repeated keys.
#[derive(Default)]
struct Writer {
    text: Vec<u8>,
    members: Vec<(Range<usize>, Range<usize>)>,
}

impl Writer {
    fn scalar<T: Serialize + ?Sized, E: de::Error>(&mut self, value: &T) -> Result<(), E> {
        serde_json::to_writer(&mut self.text, value).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for Trigger {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(TriggerVisitor { capacity: 0 })
    }
}

/// Reads a [`Trigger`] into a buffer of `capacity` bytes: the caller usually knows about how
/// long the text is (the frame's length), which saves growing the buffer step by step.
pub struct TriggerSeed {
    /// Bytes to reserve for the canonical text.
    pub capacity: usize,
}

impl<'de> DeserializeSeed<'de> for TriggerSeed {
    type Value = Trigger;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Trigger, D::Error> {
        deserializer.deserialize_any(TriggerVisitor {
            capacity: self.capacity,
        })
    }
}

struct TriggerVisitor {
    capacity: usize,
}

impl TriggerVisitor {
    /// A trigger that is not an object: only its kind matters (for the error message).
    fn other(kind: &'static str) -> Trigger {
        Trigger {
            text: Vec::new(),
            members: Err(kind),
        }
    }
}

impl<'de> Visitor<'de> for TriggerVisitor {
    type Value = Trigger;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Trigger, A::Error> {
        let mut writer = Writer {
            text: Vec::with_capacity(self.capacity),
            members: Vec::with_capacity(32),
        };
        let mut members = Vec::with_capacity(8);
        while let Some(key) = map.next_key_seed(Key(&mut writer))? {
            let value = map.next_value_seed(Canonical(&mut writer))?;
            members.push(Member { key, value });
        }
        Ok(Trigger {
            text: writer.text,
            members: Ok(members),
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Trigger, A::Error> {
        // Read (and so checked) like any array, then dropped.
        let mut writer = Writer::default();
        while seq.next_element_seed(Canonical(&mut writer))?.is_some() {}
        Ok(Self::other("an array"))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Trigger, E> {
        Ok(Self::other("a boolean"))
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Trigger, E> {
        Ok(Self::other("a number"))
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Trigger, E> {
        Ok(Self::other("a number"))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Trigger, E> {
        // As `Value`: a float that is not finite becomes null.
        let kind = if value.is_finite() {
            "a number"
        } else {
            "null"
        };
        Ok(Self::other(kind))
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Trigger, E> {
        Ok(Self::other("a string"))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Trigger, E> {
        Ok(Self::other("null"))
    }

    fn visit_none<E: de::Error>(self) -> Result<Trigger, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Trigger, D::Error> {
        deserializer.deserialize_any(self)
    }
}

/// Reads an object key and writes it as a JSON string; answers its range in the text.
struct Key<'w>(&'w mut Writer);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Range<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Range<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        let start = self.0.text.len();
        self.0.scalar(key)?;
        Ok(start..self.0.text.len())
    }
}

/// Reads any JSON value and writes it as canonical JSON; answers its range in the text.
struct Canonical<'w>(&'w mut Writer);

impl<'de> DeserializeSeed<'de> for Canonical<'_> {
    type Value = Range<usize>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl Canonical<'_> {
    fn write<T: Serialize + ?Sized, E: de::Error>(self, value: &T) -> Result<Range<usize>, E> {
        let start = self.0.text.len();
        self.0.scalar(value)?;
        Ok(start..self.0.text.len())
    }
}

impl<'de> Visitor<'de> for Canonical<'_> {
    type Value = Range<usize>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, value: bool) -> Result<Self::Value, E> {
        self.write(&value)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        self.write(&value)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        self.write(&value)
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<Self::Value, E> {
        // serde_json writes a float that is not finite as null, as `Value` stores it.
        self.write(&value)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        self.write(value)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.write(&())
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let writer = self.0;
        let start = writer.text.len();
        writer.text.push(b'[');
        let mut first = true;
        loop {
            let mark = writer.text.len();
            if !first {
                writer.text.push(b',');
            }
            if seq.next_element_seed(Canonical(writer))?.is_none() {
                writer.text.truncate(mark);
                break;
            }
            first = false;
        }
        writer.text.push(b']');
        Ok(start..writer.text.len())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let writer = self.0;
        let start = writer.text.len();
        let members_start = writer.members.len();
        writer.text.push(b'{');
        loop {
            let mark = writer.text.len();
            if mark > start + 1 {
                writer.text.push(b',');
            }
            let Some(key) = map.next_key_seed(Key(writer))? else {
                writer.text.truncate(mark);
                break;
            };
            writer.text.push(b':');
            let value = map.next_value_seed(Canonical(writer))?;
            writer.members.push((key, value));
        }
        writer.text.push(b'}');
        let Writer { text, members } = writer;
        if let Some(object) = without_repeats(text, members.get_mut(members_start..)) {
            text.truncate(start);
            text.extend_from_slice(&object);
        }
        members.truncate(members_start);
        Ok(start..text.len())
    }
}

/// For the members of one object (key and value ranges in `text`): `None` when no key repeats,
/// else the object's text with only the last member of each key, as a `Value` keeps it.
/// Repeats are rare (hand-written bodies), so finding none must be cheap: one small sort.
fn without_repeats(
    text: &[u8],
    members: Option<&mut [(Range<usize>, Range<usize>)]>,
) -> Option<Vec<u8>> {
    let members = members.filter(|members| members.len() > 1)?;
    let slice = |range: &Range<usize>| text.get(range.clone()).unwrap_or_default();
    // By key, then by position: the last of a run of equal keys is the one that counts.
    members.sort_unstable_by(|a, b| slice(&a.0).cmp(slice(&b.0)).then(a.0.start.cmp(&b.0.start)));
    if !members
        .windows(2)
        .any(|pair| slice(&pair[0].0) == slice(&pair[1].0))
    {
        return None;
    }
    let mut object = vec![b'{'];
    for (i, (key, value)) in members.iter().enumerate() {
        if members
            .get(i + 1)
            .is_some_and(|next| slice(&next.0) == slice(key))
        {
            continue;
        }
        if object.len() > 1 {
            object.push(b',');
        }
        object.extend_from_slice(slice(key));
        object.push(b':');
        object.extend_from_slice(slice(value));
    }
    object.push(b'}');
    Some(object)
}

/// Shorten user text before echoing it in an error, so a huge value cannot bloat a reject.
fn truncate(text: &str) -> String {
    const MAX: usize = 40;
    match text.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Whether `event` has a property named `name` (case-insensitive, any `#locale` suffix on the
/// stored name ignored) whose value, as text, equals `value`.
///
/// xMatters addresses form properties as `Name#en`; callers strip the suffix from the query and
/// this function strips it from stored names, so both spellings meet.
pub fn property_matches(event: &Value, name: &str, value: &str) -> bool {
    let Some(Value::Object(properties)) = event.get("properties") else {
        return false;
    };
    properties.iter().any(|(stored, stored_value)| {
        strip_locale(stored).eq_ignore_ascii_case(name)
            && match stored_value {
                Value::Array(items) => items.iter().any(|item| scalar_is(item, value)),
                other => scalar_is(other, value),
            }
    })
}

/// Whether a stored property value reads as `value`: strings as they are, numbers and booleans
/// in their JSON spelling (query strings carry only text).
fn scalar_is(stored: &Value, value: &str) -> bool {
    match stored {
        Value::String(text) => text == value,
        Value::Number(_) | Value::Bool(_) => {
            let spelled = stored.to_string();
            spelled == value
        }
        Value::Null | Value::Array(_) | Value::Object(_) => false,
    }
}

/// `Name#en` → `Name`; names without a suffix are returned as they are.
pub fn strip_locale(name: &str) -> &str {
    name.rsplit_once('#').map_or(name, |(base, _)| base)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Map};

    /// [`build`] on a `Value` trigger, decoded back into a `Value` to inspect.
    fn build_value(trigger: &Value, origin: &Origin<'_>) -> Result<Value, TriggerError> {
        let trigger = Trigger::from_value(trigger).expect("a Value is always readable");
        build(&trigger, origin).map(|json| serde_json::from_slice(&json).expect("event JSON"))
    }

    /// [`build`] on trigger text, decoded back into a `Value` to inspect.
    fn build_text(trigger: &str, origin: &Origin<'_>) -> Result<Value, TriggerError> {
        let trigger = Trigger::parse(trigger).expect("readable trigger");
        build(&trigger, origin).map(|json| serde_json::from_slice(&json).expect("event JSON"))
    }

    fn origin() -> Origin<'static> {
        Origin {
            event_id: "e-1",
            request_id: "r-1",
            agent_id: "agent-01",
            integration_id: "i-1",
            form: Some("Incident"),
            plan: None,
            flood_control: false,
            suppressed: None,
            created: "2024-01-01T00:00:00.000Z",
        }
    }

    #[test]
    fn the_integration_names_plan_and_flood_control() {
        let origin = Origin {
            plan: Some("Ops"),
            flood_control: true,
            suppressed: Some("too many"),
            ..origin()
        };
        let event = build_value(&json!({"plan": "trigger's"}), &origin).expect("valid");
        assert_eq!(event["plan"], json!({"name": "Ops"}));
        assert_eq!(event["floodControl"], true);
        assert_eq!(
            event["suppressed"],
            json!({"rule": "Alert Rate Filter", "reason": "too many"})
        );
        assert_eq!(
            event,
            reference_build(&json!({"plan": "trigger's"}), &origin).expect("valid")
        );
    }

    #[test]
    fn builds_xmatters_shape_and_keeps_extra_fields() {
        let trigger = json!({
            "priority": "high",
            "properties": {"Summary": "disk full"},
            "recipients": [{"targetName": "ops"}],
            "responses": [{"id": "ack"}],
            "expirationInMinutes": 30,
            "id": "forged", "status": "TERMINATED", "floodControl": true
        });
        let event = build_value(&trigger, &origin()).expect("valid trigger");
        assert_eq!(event["id"], "e-1");
        assert_eq!(event["eventId"], "e-1");
        assert_eq!(event["status"], "ACTIVE");
        assert_eq!(event["priority"], "HIGH");
        assert_eq!(event["properties"]["Summary"], "disk full");
        assert_eq!(event["recipients"][0]["targetName"], "ops");
        assert_eq!(event["responses"][0]["id"], "ack");
        assert_eq!(event["expirationInMinutes"], 30);
        assert_eq!(event["form"], json!({"name": "Incident"}));
        assert_eq!(event["plan"], Value::Null);
        assert_eq!(event["requestId"], "r-1");
        assert_eq!(event["floodControl"], false);
        assert_eq!(event["links"]["self"], "/api/xm/1/events/e-1");
        assert_eq!(event["integrationId"], "i-1");
        assert_eq!(event["agentId"], "agent-01");
    }

    #[test]
    fn defaults_for_a_minimal_trigger() {
        let event = build_value(
            &json!({}),
            &Origin {
                form: None,
                ..origin()
            },
        )
        .expect("valid");
        assert_eq!(event["priority"], "MEDIUM");
        assert_eq!(event["properties"], json!({}));
        assert_eq!(event["recipients"], json!([]));
        assert_eq!(event["form"], Value::Null);
    }

    #[test]
    fn rejects_bad_triggers() {
        assert_eq!(
            build_value(&json!([1]), &origin()),
            Err(TriggerError::NotAnObject("an array"))
        );
        assert_eq!(
            build_value(&json!("x"), &origin()),
            Err(TriggerError::NotAnObject("a string"))
        );
        assert!(matches!(
            build_value(&json!({"priority": "urgent"}), &origin()),
            Err(TriggerError::BadPriority(_))
        ));
        assert!(matches!(
            build_value(&json!({"priority": 3}), &origin()),
            Err(TriggerError::BadPriority(_))
        ));
        assert_eq!(
            build_value(&json!({"properties": [1, 2]}), &origin()),
            Err(TriggerError::BadProperties("an array"))
        );
        assert_eq!(
            build_value(&json!({"properties": "x"}), &origin()),
            Err(TriggerError::BadProperties("a string"))
        );
    }

    #[test]
    fn long_bad_priority_is_truncated_in_the_message() {
        let long = "x".repeat(1000);
        let error = build_value(&json!({ "priority": long }), &origin()).expect_err("invalid");
        assert!(error.to_string().len() < 120, "{error}");
    }

    #[test]
    fn property_matching_ignores_locale_and_case_of_the_name() {
        let event = json!({"properties": {"Host#en": "db1", "Count": 3, "Tags": ["a", "b"]}});
        assert!(property_matches(&event, "host", "db1"));
        assert!(!property_matches(&event, "host", "DB1"));
        assert!(property_matches(&event, "Count", "3"));
        assert!(property_matches(&event, "Tags", "b"));
        assert!(!property_matches(&event, "Missing", "db1"));
        assert_eq!(strip_locale("Name#en"), "Name");
        assert_eq!(strip_locale("Name"), "Name");
    }

    #[test]
    fn status_parses_case_insensitively() {
        assert_eq!(Status::parse("suspended"), Some(Status::Suspended));
        assert_eq!(Status::parse("ACTIVE").map(Status::as_str), Some("ACTIVE"));
        assert_eq!(Status::parse("paused"), None);
    }

    /// The `Value`-based `build` this module used before [`Trigger`], kept verbatim as the test
    /// oracle: the text path must decide and produce exactly what it did.
    fn reference_build(trigger: &Value, origin: &Origin<'_>) -> Result<Value, TriggerError> {
        let Value::Object(fields) = trigger else {
            return Err(TriggerError::NotAnObject(server::http_util::json_kind(
                trigger,
            )));
        };
        let priority = match fields.get("priority") {
            None | Some(Value::Null) => "MEDIUM".to_owned(),
            Some(Value::String(text)) => {
                let upper = text.to_ascii_uppercase();
                if !matches!(upper.as_str(), "LOW" | "MEDIUM" | "HIGH") {
                    return Err(TriggerError::BadPriority(format!("\"{}\"", truncate(text))));
                }
                upper
            }
            Some(other) => {
                return Err(TriggerError::BadPriority(
                    server::http_util::json_kind(other).to_owned(),
                ))
            }
        };
        let properties = match fields.get("properties") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(value @ Value::Object(_)) => value.clone(),
            Some(other) => {
                return Err(TriggerError::BadProperties(server::http_util::json_kind(
                    other,
                )))
            }
        };
        let recipients = match fields.get("recipients") {
            None | Some(Value::Null) => Value::Array(Vec::new()),
            Some(value) => value.clone(),
        };
        let mut event = fields.clone();
        let owned = [
            ("id", json!(origin.event_id)),
            ("eventId", json!(origin.event_id)),
            ("status", json!(Status::Active.as_str())),
            ("priority", json!(priority)),
            ("properties", properties),
            ("recipients", recipients),
            (
                "form",
                origin
                    .form
                    .map_or(Value::Null, |name| json!({ "name": name })),
            ),
            (
                "plan",
                match origin.plan {
                    Some(name) => json!({ "name": name }),
                    None => event.get("plan").cloned().unwrap_or(Value::Null),
                },
            ),
            ("requestId", json!(origin.request_id)),
            ("created", json!(origin.created)),
            ("floodControl", json!(origin.flood_control)),
            (
                "suppressed",
                origin.suppressed.map_or(
                    Value::Null,
                    |reason| json!({"rule": "Alert Rate Filter", "reason": reason}),
                ),
            ),
            (
                "links",
                json!({ "self": format!("/api/xm/1/events/{}", origin.event_id) }),
            ),
            ("integrationId", json!(origin.integration_id)),
            ("agentId", json!(origin.agent_id)),
        ];
        for (key, value) in owned {
            // `suppressed` is the central's: absent unless the alert rate filter set it.
            if value.is_null() && key == "suppressed" {
                event.remove(key);
                continue;
            }
            event.insert(key.to_owned(), value);
        }
        Ok(Value::Object(event))
    }

    /// Whether every object in `text` (a JSON document) has unique keys.
    fn keys_unique(text: &[u8]) -> bool {
        struct Unique(bool);
        impl<'de> Deserialize<'de> for Unique {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_any(UniqueVisitor)
            }
        }
        struct UniqueVisitor;
        impl<'de> Visitor<'de> for UniqueVisitor {
            type Value = Unique;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("JSON")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Unique, E> {
                Ok(Unique(true))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Unique, E> {
                Ok(Unique(true))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Unique, E> {
                Ok(Unique(true))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Unique, E> {
                Ok(Unique(true))
            }
            fn visit_str<E>(self, _: &str) -> Result<Unique, E> {
                Ok(Unique(true))
            }
            fn visit_unit<E>(self) -> Result<Unique, E> {
                Ok(Unique(true))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
                let mut all = true;
                while let Some(Unique(ok)) = seq.next_element()? {
                    all &= ok;
                }
                Ok(Unique(all))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
                let mut seen = std::collections::HashSet::new();
                let mut all = true;
                while let Some(key) = map.next_key::<String>()? {
                    all &= seen.insert(key);
                    let Unique(ok) = map.next_value()?;
                    all &= ok;
                }
                Ok(Unique(all))
            }
        }
        serde_json::from_slice::<Unique>(text).is_ok_and(|Unique(all)| all)
    }

    /// `text` as a JSON string literal; with `escape_all` every character as `\uXXXX`.
    fn literal(text: &str, escape_all: bool) -> String {
        if !escape_all {
            return serde_json::to_string(text).expect("string");
        }
        let mut out = String::from("\"");
        for unit in text.encode_utf16() {
            out.push_str(&format!("\\u{unit:04x}"));
        }
        out.push('"');
        out
    }

    const NAMES: [&str; 16] = [
        "priority",
        "properties",
        "recipients",
        "plan",
        "id",
        "status",
        "links",
        "a",
        "Host#en",
        "",
        "é\u{1F600}",
        "quote\"back\\slash",
        "tab\tnew\nline",
        "high",
        "urgent",
        "Low",
    ];

    fn string_literal() -> impl Strategy<Value = String> {
        (prop::sample::select(NAMES.to_vec()), any::<bool>())
            .prop_map(|(text, escape_all)| literal(text, escape_all))
    }

    /// JSON texts with what the trigger reader must get right: repeated keys, escapes, odd
    /// number spellings, whitespace, nesting; also a few invalid texts (numbers out of range).
    pub(crate) fn json_text() -> impl Strategy<Value = String> {
        let scalar = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            prop::sample::select(vec![
                "1E2",
                "-0",
                "-0.0",
                "0.000",
                "1.5e300",
                "-1e-400",
                "1e400",
                "12345678901234567890123",
            ])
            .prop_map(str::to_owned),
            string_literal(),
        ];
        let space = prop::sample::select(vec!["", " ", "\n  ", "\t"]);
        scalar.prop_recursive(4, 48, 6, move |inner| {
            let space = space.clone();
            prop_oneof![
                (prop::collection::vec(inner.clone(), 0..5), space.clone()).prop_map(
                    |(items, gap)| format!("[{gap}{}{gap}]", items.join(&format!(",{gap}")))
                ),
                (
                    prop::collection::vec((string_literal(), inner), 0..6),
                    space
                )
                    .prop_map(|(members, gap)| {
                        let members: Vec<String> = members
                            .into_iter()
                            .map(|(key, value)| format!("{key}{gap}:{gap}{value}"))
                            .collect();
                        format!("{{{gap}{}{gap}}}", members.join(&format!(",{gap}")))
                    }),
            ]
        })
    }

    /// A trigger text: mostly an object whose members use the names `build` looks at.
    pub(crate) fn trigger_text() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::collection::vec((string_literal(), json_text()), 0..8).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(key, value)| format!("{key}:{value}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
            1 => json_text(),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The text path accepts what a `Value` accepts and stores an event that reads back as
        /// the reference's stored event does (REST answers decode the stored text), with unique
        /// keys; the `Value` path (fallback frames) builds the same too.
        #[test]
        fn text_path_matches_the_value_reference(text in trigger_text()) {
            let value = serde_json::from_str::<Value>(&text);
            let trigger = Trigger::parse(&text);
            let reason = value.as_ref().err().map(ToString::to_string);
            prop_assert_eq!(value.is_ok(), trigger.is_ok(), "{} / {:?}", text, reason);
            let (Ok(value), Ok(trigger)) = (value, trigger) else {
                return Ok(());
            };
            // What REST read back from what the reference stored.
            let expected = reference_build(&value, &origin()).map(|event| {
                let stored = serde_json::to_vec(&event).expect("encode");
                serde_json::from_slice::<Value>(&stored).expect("decode")
            });
            let built = build(&trigger, &origin());
            match (&expected, &built) {
                (Ok(expected), Ok(json)) => {
                    prop_assert!(keys_unique(json), "{}", String::from_utf8_lossy(json));
                    let decoded: Value = serde_json::from_slice(json).expect("event JSON");
                    prop_assert_eq!(&decoded, expected);
                }
                (Err(expected), Err(error)) => prop_assert_eq!(error, expected),
                _ => prop_assert!(false, "{:?} vs {:?}", expected, built.map(String::from_utf8)),
            }
            let from_value = Trigger::from_value(&value).expect("a Value is readable");
            prop_assert_eq!(build(&from_value, &origin()).map(|json| {
                serde_json::from_slice::<Value>(&json).expect("event JSON")
            }), expected);
        }
    }

    #[test]
    fn floats_are_written_once_as_a_value_writes_them() {
        // serde_json reads floats approximately, so every read-and-write cycle may move a float
        // by an ulp: the stored text must be the one write of the value read from the frame,
        // also where a repeated key forces an object to be rewritten.
        for text in [
            r#"{"a":{"priority":{"priority":-9.889024412277674e81}}}"#,
            r#"{"properties":{"p":[5.187127583117835e261]},"recipients":{"r":{"k":null,"k":1}}}"#,
        ] {
            let value: Value = serde_json::from_str(text).expect("JSON");
            let stored = serde_json::to_vec(&reference_build(&value, &origin()).expect("valid"))
                .expect("encode");
            let expected: Value = serde_json::from_slice(&stored).expect("decode");
            assert_eq!(build_text(text, &origin()), Ok(expected), "{text}");
        }
    }

    #[test]
    fn repeated_keys_keep_the_last_like_a_value() {
        let event = build_text(
            r#"{"priority":"urgent","priority":"low","properties":3,"properties":{"a":1},
                "x":1,"x":{"y":1,"y":[2]},"recipients":null,"recipients":[{"targetName":"ops"}]}"#,
            &origin(),
        )
        .expect("the last priority and properties are valid");
        assert_eq!(event["priority"], "LOW");
        assert_eq!(event["properties"], json!({"a": 1}));
        assert_eq!(event["x"], json!({"y": [2]}));
        assert_eq!(event["recipients"][0]["targetName"], "ops");
        let error = build_text(r#"{"priority":"low","priority":"urgent"}"#, &origin());
        assert_eq!(
            error,
            Err(TriggerError::BadPriority("\"urgent\"".to_owned()))
        );
        // Stored text has unique keys at every level.
        let trigger = Trigger::parse(r#"{"a":{"b":1,"c":{"d":1,"d":2},"b":3},"a":0,"p":{"a":1}}"#)
            .expect("readable");
        let json = build(&trigger, &origin()).expect("valid");
        assert!(keys_unique(&json), "{}", String::from_utf8_lossy(&json));
        let event: Value = serde_json::from_slice(&json).expect("JSON");
        assert_eq!(event["a"], 0);
        assert_eq!(event["p"], json!({"a": 1}));
    }

    #[test]
    fn null_priority_and_properties_count_as_absent() {
        let event = build_text(
            r#"{"priority":null,"properties":null,"recipients":null,"plan":null}"#,
            &origin(),
        )
        .expect("valid");
        assert_eq!(event["priority"], "MEDIUM");
        assert_eq!(event["properties"], json!({}));
        assert_eq!(event["recipients"], json!([]));
        assert_eq!(event["plan"], Value::Null);
        let event = build_text(r#"{"plan":{"name":"P"}}"#, &origin()).expect("valid");
        assert_eq!(event["plan"], json!({"name": "P"}));
    }

    #[test]
    fn non_object_triggers_name_their_kind() {
        for (text, kind) in [
            ("null", "null"),
            ("true", "a boolean"),
            ("-1.5e3", "a number"),
            ("18446744073709551615", "a number"),
            (r#""x""#, "a string"),
            ("[{\"a\":1}]", "an array"),
        ] {
            assert_eq!(
                build_text(text, &origin()),
                Err(TriggerError::NotAnObject(kind)),
                "{text}"
            );
        }
        for (text, kind) in [("[]", "an array"), ("true", "a boolean"), ("2", "a number")] {
            assert_eq!(
                build_text(&format!(r#"{{"priority":{text}}}"#), &origin()),
                Err(TriggerError::BadPriority(kind.to_owned()))
            );
            assert_eq!(
                build_text(&format!(r#"{{"properties":{text}}}"#), &origin()),
                Err(TriggerError::BadProperties(kind))
            );
        }
    }

    #[test]
    fn escaped_keys_are_read_and_written_back_escaped() {
        // `\u0069d` is `id` and `pri\u006frity` is `priority`: owned and validated like them.
        let event = build_text(
            r#"{"\u0069d":"forged","pri\u006frity":"\u0068igh","a\"b":1,"c\\d\n":2,"\u00e9":3,
                "\ud83d\ude00":[4]}"#,
            &origin(),
        )
        .expect("valid");
        assert_eq!(event["id"], "e-1");
        assert_eq!(event["priority"], "HIGH");
        assert_eq!(event["a\"b"], 1);
        assert_eq!(event["c\\d\n"], 2);
        assert_eq!(event["é"], 3);
        assert_eq!(event["😀"], json!([4]));
        assert_eq!(
            build_text(r#"{"pri\u006frity":"\u0075rgent"}"#, &origin()),
            Err(TriggerError::BadPriority("\"urgent\"".to_owned()))
        );
    }

    #[test]
    fn origin_text_is_escaped() {
        let event = build_value(
            &json!({}),
            &Origin {
                request_id: "r\"1\\\n",
                form: Some("F\"orm"),
                ..origin()
            },
        )
        .expect("valid");
        assert_eq!(event["requestId"], "r\"1\\\n");
        assert_eq!(event["form"]["name"], "F\"orm");
    }

    #[test]
    fn reads_exactly_what_a_value_reads() {
        // Out of range, bad escapes, lone surrogates, control characters, trailing text: refused
        // by both. Nesting is limited the same way too.
        for text in [
            r#"{"a":1e400}"#,
            r#"{"a":"\x"}"#,
            r#"{"a":"\ud800"}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":1} x"#,
            r#"{"a":1,}"#,
        ] {
            assert!(serde_json::from_str::<Value>(text).is_err(), "{text}");
            assert!(Trigger::parse(text).is_err(), "{text}");
        }
        for depth in [120, 126, 127, 128, 200] {
            let text = format!("{{\"a\":{}{}}}", "[".repeat(depth), "]".repeat(depth));
            assert_eq!(
                Trigger::parse(&text).is_ok(),
                serde_json::from_str::<Value>(&text).is_ok(),
                "depth {depth}"
            );
        }
    }
}
