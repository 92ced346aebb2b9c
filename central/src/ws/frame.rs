//! Reading `event.create` frames directly from their text (see [`Create`]).

use crate::event;

/// An `event.create` frame ([`protocol::EventCreate`]) read in one pass, its trigger kept as text.
///
/// `serde_json::from_str::<AgentFrame>` reads a frame through serde's internally tagged enum,
/// which first buffers the whole frame (every string and key copied) and then reads the buffer
/// a second time, and it materializes the trigger as a `Value`. This reader takes the members
/// straight from the text instead. It only ever answers "yes, and these are the fields" for a
/// frame the protocol's types accept with the same fields: anything else (another `type`, a
/// missing or repeated member, invalid JSON) is an error, and [`super::classify_text`] then
/// handles the frame exactly as before. Unknown members are read fully (and dropped), as the
/// tagged enum reads them, so a frame it refuses is not accepted here.
pub(super) struct Create {
    pub(super) seq: u64,
    pub(super) request_id: String,
    pub(super) index: u32,
    pub(super) integration_id: String,
    pub(super) form: Option<String>,
    pub(super) plan: Option<String>,
    pub(super) sender: Option<String>,
    pub(super) flood_control: bool,
    pub(super) trigger: event::Trigger,
}

impl Create {
    /// Read an `event.create` frame directly (see the type's docs); `Err` for anything else.
    pub(super) fn parse(text: &str) -> Result<Self, serde_json::Error> {
        event::parse_whole(
            text,
            CreateSeed {
                capacity: text.len(),
            },
        )
    }

    /// From a frame read by the protocol's types; `Err` carries the seq and the reason.
    pub(super) fn from_protocol(
        create: protocol::EventCreate,
    ) -> Result<Self, (u64, serde_json::Error)> {
        let trigger = event::Trigger::from_value(&create.trigger).map_err(|e| (create.seq, e))?;
        Ok(Self {
            seq: create.seq,
            request_id: create.request_id,
            index: create.index,
            integration_id: create.integration_id,
            form: create.form,
            plan: create.plan,
            sender: create.sender,
            flood_control: create.flood_control,
            trigger,
        })
    }
}

/// The members of an `event.create` frame.
enum Member {
    Type,
    Seq,
    RequestId,
    Index,
    IntegrationId,
    Form,
    Plan,
    Sender,
    FloodControl,
    Trigger,
    Other,
}

impl<'de> serde::Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(MemberVisitor)
    }
}

struct MemberVisitor;

impl serde::de::Visitor<'_> for MemberVisitor {
    type Value = Member;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a member name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Member, E> {
        Ok(match name {
            "type" => Member::Type,
            "seq" => Member::Seq,
            "requestId" => Member::RequestId,
            "index" => Member::Index,
            "integrationId" => Member::IntegrationId,
            "form" => Member::Form,
            "plan" => Member::Plan,
            "sender" => Member::Sender,
            "floodControl" => Member::FloodControl,
            "trigger" => Member::Trigger,
            _ => Member::Other,
        })
    }
}

/// The `type` member; only `"event.create"` is read (a JSON string, escapes allowed).
struct EventCreateTag;

impl<'de> serde::Deserialize<'de> for EventCreateTag {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(EventCreateTagVisitor)
    }
}

struct EventCreateTagVisitor;

impl serde::de::Visitor<'_> for EventCreateTagVisitor {
    type Value = EventCreateTag;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("\"event.create\"")
    }

    fn visit_str<E: serde::de::Error>(self, tag: &str) -> Result<EventCreateTag, E> {
        if tag == "event.create" {
            Ok(EventCreateTag)
        } else {
            Err(E::custom("not an event.create frame"))
        }
    }
}

/// Reads a [`Create`]; `capacity` (the frame's length) sizes the trigger's text buffer.
struct CreateSeed {
    capacity: usize,
}

impl<'de> serde::de::DeserializeSeed<'de> for CreateSeed {
    type Value = Create;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Create, D::Error> {
        deserializer.deserialize_map(self)
    }
}

/// Read `slot` once; a repeated member is an error (as for the protocol's derived types).
fn once<'de, T: serde::Deserialize<'de>, A: serde::de::MapAccess<'de>>(
    slot: &mut Option<T>,
    map: &mut A,
    name: &'static str,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(serde::de::Error::duplicate_field(name));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

impl<'de> serde::de::Visitor<'de> for CreateSeed {
    type Value = Create;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event.create frame")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Create, A::Error> {
        use serde::de::Error as _;
        let mut tag: Option<EventCreateTag> = None;
        let mut seq = None;
        let mut request_id = None;
        let mut index = None;
        let mut integration_id = None;
        let mut form: Option<Option<String>> = None;
        let mut plan: Option<Option<String>> = None;
        let mut sender: Option<Option<String>> = None;
        let mut flood_control: Option<bool> = None;
        let mut trigger = None;
        while let Some(member) = map.next_key::<Member>()? {
            match member {
                Member::Type => once(&mut tag, &mut map, "type")?,
                Member::Seq => once(&mut seq, &mut map, "seq")?,
                Member::RequestId => once(&mut request_id, &mut map, "requestId")?,
                Member::Index => once(&mut index, &mut map, "index")?,
                Member::IntegrationId => once(&mut integration_id, &mut map, "integrationId")?,
                Member::Form => once(&mut form, &mut map, "form")?,
                Member::Plan => once(&mut plan, &mut map, "plan")?,
                Member::Sender => once(&mut sender, &mut map, "sender")?,
                Member::FloodControl => once(&mut flood_control, &mut map, "floodControl")?,
                Member::Trigger => {
                    if trigger.is_some() {
                        return Err(A::Error::duplicate_field("trigger"));
                    }
                    trigger = Some(map.next_value_seed(event::TriggerSeed {
                        capacity: self.capacity,
                    })?);
                }
                // Read like any JSON value (a trigger reader accepts every value) and dropped.
                Member::Other => drop(map.next_value::<event::Trigger>()?),
            }
        }
        let missing = A::Error::missing_field;
        tag.ok_or_else(|| missing("type"))?;
        Ok(Create {
            seq: seq.ok_or_else(|| missing("seq"))?,
            request_id: request_id.ok_or_else(|| missing("requestId"))?,
            index: index.ok_or_else(|| missing("index"))?,
            integration_id: integration_id.ok_or_else(|| missing("integrationId"))?,
            form: form.flatten(),
            plan: plan.flatten(),
            sender: sender.flatten(),
            flood_control: flood_control.unwrap_or(false),
            trigger: trigger.ok_or_else(|| missing("trigger"))?,
        })
    }
}
