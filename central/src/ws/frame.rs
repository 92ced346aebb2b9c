//! Reading `event.create` frames directly from their text (see [`Create`]).
//!
//! What it does not do: read other frames ([`super::classify_text`] does, through the
//! protocol's tagged enum) or check the trigger (`event::check`).

use crate::event;

/// An `event.create` frame ([`protocol::EventCreate`]) read in one pass, its trigger kept as
/// canonical text ([`event::Trigger`]).
///
/// `serde_json::from_str::<AgentFrame>` reads a frame through serde's internally tagged enum,
/// which first buffers the whole frame (every string and key copied) and then reads the buffer
/// a second time, and it materializes the trigger as a `Value`. This reader goes through the
/// protocol's [`protocol::frame::EventCreateText`] instead, with the trigger read by
/// [`event::Trigger`] inside the same pass (so the nesting limit counts from the frame, as for
/// the tagged enum). It only ever answers "yes, and these are the fields" for a frame the
/// protocol's types accept with the same fields: anything else (another `type`, a missing,
/// repeated or unknown member, invalid JSON) is an error, and [`super::classify_text`] then
/// handles the frame exactly as before.
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
        let frame: protocol::frame::EventCreateText<'_, event::Trigger> =
            serde_json::from_str(text)?;
        Ok(Self {
            seq: frame.seq,
            request_id: frame.request_id.into_owned(),
            index: frame.index,
            integration_id: frame.integration_id.into_owned(),
            form: frame.form.map(std::borrow::Cow::into_owned),
            plan: frame.plan.map(std::borrow::Cow::into_owned),
            sender: frame.sender.map(std::borrow::Cow::into_owned),
            flood_control: frame.flood_control,
            trigger: frame.trigger,
        })
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
