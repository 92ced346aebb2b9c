//! The contract between the store and the relay: the [`Outbox`] trait the store implements and
//! the [`OutboxEntry`] it hands out. It lives with the store so the relay depends on the store's
//! trait, never the reverse.
//!
//! What it does NOT do: store anything or speak to the central; the store and the relay do.

use std::sync::Arc;

use bytes::Bytes;
use protocol::{AgentFrame, EventCreate};
use tokio::sync::Notify;

/// One outbox entry as the relay sends it: the complete `event.create` frame text, stored that way
/// so sending needs no decode/encode round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxEntry {
    /// The entry's sequence number (also inside `frame`).
    pub seq: u64,
    /// The JSON text (UTF-8) of the [`AgentFrame::EventCreate`] frame (shared, so handing it out
    /// and keeping it for a resend copies nothing). Plain bytes, so the store needs no websocket
    /// types; the relay turns them into a text message.
    pub frame: Bytes,
}

impl OutboxEntry {
    /// Encode `event` as its frame (for outboxes that keep structured entries).
    pub fn encode(event: &EventCreate) -> Self {
        Self {
            seq: event.seq,
            frame: Bytes::from(AgentFrame::EventCreate(event.clone()).to_text()),
        }
    }
}

/// The store side of the relay. The store implements it; the relay never touches sled directly,
/// which keeps the at-least-once bookkeeping (remove only on ack) in one place.
pub trait Outbox: Send + Sync + 'static {
    /// Entries with seq > `after` (all from the start if None), in ascending seq order, at most `max`.
    fn pending_after(&self, after: Option<u64>, max: usize) -> Result<Vec<OutboxEntry>, String>;
    /// The central acknowledged these `(seq, event_id)`s: remove them from the outbox and record
    /// each event id on its request. Batched, so a burst of acks costs one store write per tree.
    fn acknowledged(&self, acks: &[(u64, String)]) -> Result<(), String>;
    /// The central refused `seq` for good: move it to the dead-letter tree with the reason.
    fn rejected(&self, seq: u64, status: u16, message: &str) -> Result<(), String>;
    /// Notified whenever new entries were appended (so the relay wakes without polling).
    fn appended(&self) -> Arc<Notify>;
}
