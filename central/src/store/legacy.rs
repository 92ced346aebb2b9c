//! Converts stores written by earlier centrals to batches, once, at open.
//!
//! Two older layouts kept one sled key per event plus index keys, all in the `events` tree:
//! - layout 1: `o` ‖ sequence (8 bytes) → event JSON, `e` ‖ event id text → sequence, and
//!   `r` ‖ request key → sequence ‖ event id text (event ids were random v4 UUIDs);
//! - layout 2: `o` ‖ event id (16 bytes, time-ordered v7) → event JSON and `r` ‖ request key →
//!   event id (16 bytes).
//!
//! In both, the request key is `len(requestId) ‖ requestId ‖ len(agent) ‖ agent ‖ index`.
//! Events are converted in `o` order, a chunk at a time: one sled batch inserts the chunk as a
//! batch value and removes its old keys, so a crash leaves every event in exactly one layout and
//! the next open carries on. Layout 1 chunks are stored under their first sequence number (all
//! below any time-ordered id, so they keep listing first) and marked [`Ids::Unordered`].
//!
//! What it does not do: run after open, or touch batches already converted.

use std::collections::HashMap;

use serde_json::Value;
use uuid::Uuid;

use super::batch::{self, Entry, Ids};
use super::{batch_key, StoreError};

const EVENT: u8 = b'e';
const ORDER: u8 = b'o';
const BY_REQUEST: u8 = b'r';

/// Events per converted batch: small enough that one chunk is a modest sled batch.
const CHUNK: usize = 256;

/// Where an old `r` key points to and what it says.
struct Indexed {
    r_key: sled::IVec,
    agent_id: String,
    request_id: String,
    index: u32,
}

/// One old event on its way into a batch.
struct Old {
    o_key: sled::IVec,
    id: u128,
    json: sled::IVec,
    indexed: Option<Indexed>,
    /// Layout 1 only: the `e` key to remove.
    e_key: Option<Vec<u8>>,
}

fn corrupt(what: &str, reason: impl Into<String>) -> StoreError {
    StoreError::Corrupt {
        id: what.to_owned(),
        reason: reason.into(),
    }
}

/// The request key fields of an `r` key (after its prefix byte).
fn parse_request_key(rest: &[u8]) -> Option<(String, String, u32)> {
    let mut reader = batch::Reader { rest };
    let request_id = reader.text().ok()?.to_owned();
    let agent_id = reader.text().ok()?.to_owned();
    let index = reader.u32().ok()?;
    reader
        .rest
        .is_empty()
        .then_some((agent_id, request_id, index))
}

/// The `o` key an `r` value points to: 16 id bytes (layout 2) or a sequence then the id text
/// (layout 1).
fn order_key_of(value: &[u8]) -> Option<Vec<u8>> {
    let mut key = vec![ORDER];
    if value.len() == 16 {
        key.extend_from_slice(value);
    } else {
        key.extend_from_slice(value.get(..8)?);
    }
    Some(key)
}

/// Convert every old-layout event in `tree` to batches. Returns how many were converted.
pub(super) fn convert(tree: &sled::Tree) -> Result<usize, StoreError> {
    if tree.scan_prefix([ORDER]).next().is_none() {
        return Ok(0);
    }
    let mut indexed: HashMap<Vec<u8>, Indexed> = HashMap::new();
    for item in tree.scan_prefix([BY_REQUEST]) {
        let (r_key, value) = item?;
        let fields = r_key.get(1..).and_then(parse_request_key);
        let (Some((agent_id, request_id, index)), Some(o_key)) = (fields, order_key_of(&value))
        else {
            return Err(corrupt("(request index entry)", "unreadable key or value"));
        };
        indexed.insert(
            o_key,
            Indexed {
                r_key,
                agent_id,
                request_id,
                index,
            },
        );
    }
    let mut converted = 0;
    let mut chunk: Vec<Old> = Vec::with_capacity(CHUNK);
    let mut chunk_ids = Ids::Ordered;
    for item in tree.scan_prefix([ORDER]) {
        let (o_key, json) = item?;
        let old = read_old(o_key, json, &mut indexed)?;
        let ids = if old.e_key.is_some() {
            Ids::Unordered
        } else {
            Ids::Ordered
        };
        if chunk.len() == CHUNK || (!chunk.is_empty() && ids != chunk_ids) {
            converted += write_chunk(tree, &chunk, chunk_ids)?;
            chunk.clear();
        }
        chunk_ids = ids;
        chunk.push(old);
    }
    if !chunk.is_empty() {
        converted += write_chunk(tree, &chunk, chunk_ids)?;
    }
    Ok(converted)
}

fn read_old(
    o_key: sled::IVec,
    json: sled::IVec,
    indexed: &mut HashMap<Vec<u8>, Indexed>,
) -> Result<Old, StoreError> {
    let found = indexed.remove(o_key.as_ref());
    if o_key.len() != 9 {
        let id = <[u8; 16]>::try_from(&o_key[1..])
            .map_err(|_| corrupt("(order key)", format!("{} bytes long", o_key.len())))?;
        return Ok(Old {
            id: u128::from_be_bytes(id),
            o_key,
            json,
            indexed: found,
            e_key: None,
        });
    }
    // Layout 1: the id is only in the JSON (and the `e` key named after it).
    let event: Value = serde_json::from_slice(&json)
        .map_err(|error| corrupt("(layout 1 event)", error.to_string()))?;
    let text = event.get("id").and_then(Value::as_str).unwrap_or_default();
    let id = Uuid::try_parse(text)
        .ok()
        .ok_or_else(|| corrupt(text, "the event id is not a UUID"))?;
    let mut e_key = vec![EVENT];
    e_key.extend_from_slice(text.as_bytes());
    Ok(Old {
        id: id.as_u128(),
        o_key,
        json,
        indexed: found,
        e_key: Some(e_key),
    })
}

fn write_chunk(tree: &sled::Tree, chunk: &[Old], ids: Ids) -> Result<usize, StoreError> {
    let mut encoder = batch::Encoder::default();
    let mut writes = sled::Batch::default();
    for old in chunk {
        // An event without an index entry (the data directory was edited by hand) keeps its
        // JSON's request id under no agent, so it still lists and no resend can match it.
        let (agent_id, request_id, index) = match &old.indexed {
            Some(indexed) => (
                indexed.agent_id.as_str(),
                indexed.request_id.clone(),
                indexed.index,
            ),
            None => {
                let event: Value = serde_json::from_slice(&old.json).unwrap_or(Value::Null);
                let request_id = event.get("requestId").and_then(Value::as_str);
                ("", request_id.unwrap_or_default().to_owned(), 0)
            }
        };
        encoder.push(&Entry {
            id: old.id,
            index,
            agent_id,
            request_id: &request_id,
            json: &old.json,
        });
        writes.remove(old.o_key.clone());
        if let Some(indexed) = &old.indexed {
            writes.remove(indexed.r_key.clone());
        }
        if let Some(e_key) = &old.e_key {
            writes.remove(e_key.as_slice());
        }
    }
    let key = match (ids, chunk.first()) {
        (Ids::Ordered, Some(first)) => first.id,
        // Layout 1 sequences (`o` keys of 9 bytes, see `read_old`) sort below every
        // time-ordered id, as their `o` keys did.
        (Ids::Unordered, Some(first)) => u128::from(u64::from_be_bytes(
            <[u8; 8]>::try_from(&first.o_key[1..]).unwrap_or_default(),
        )),
        (_, None) => return Ok(0),
    };
    writes.insert(&batch_key(key)[..], encoder.finish(ids));
    tree.apply_batch(writes)?;
    Ok(chunk.len())
}

/// Test support: write events the way the older layouts did.
#[cfg(test)]
pub(super) mod write {
    use super::*;

    fn request_key(agent_id: &str, request_id: &str, index: u32) -> Vec<u8> {
        let mut key = vec![BY_REQUEST];
        batch::put_text(&mut key, request_id);
        batch::put_text(&mut key, agent_id);
        key.extend_from_slice(&index.to_be_bytes());
        key
    }

    /// Layout 1: `(event id, request id, index, sequence)` for agent `agent-01`.
    pub fn layout_1(tree: &sled::Tree, events: &[(&str, &str, u32, u64)]) {
        for (id, request_id, index, sequence) in events {
            let sequence = sequence.to_be_bytes();
            let json = serde_json::json!({"id": id, "eventId": id, "status": "ACTIVE",
                "requestId": request_id, "properties": {"old": true}});
            let mut o_key = vec![ORDER];
            o_key.extend_from_slice(&sequence);
            tree.insert(o_key, serde_json::to_vec(&json).expect("json"))
                .expect("o");
            let mut e_key = vec![EVENT];
            e_key.extend_from_slice(id.as_bytes());
            tree.insert(e_key, &sequence[..]).expect("e");
            let mut value = sequence.to_vec();
            value.extend_from_slice(id.as_bytes());
            tree.insert(request_key("agent-01", request_id, *index), value)
                .expect("r");
        }
    }

    /// Layout 2: `(event id, request id, index)` for agent `agent-01`; a `None` index writes
    /// the event without an index entry.
    pub fn layout_2(tree: &sled::Tree, events: &[(Uuid, &str, Option<u32>)]) {
        for (id, request_id, index) in events {
            let json = serde_json::json!({"id": id.to_string(), "status": "ACTIVE",
                "requestId": request_id, "properties": {"layout": 2}});
            let mut o_key = vec![ORDER];
            o_key.extend_from_slice(id.as_bytes());
            tree.insert(o_key, serde_json::to_vec(&json).expect("json"))
                .expect("o");
            if let Some(index) = index {
                tree.insert(
                    request_key("agent-01", request_id, *index),
                    &id.as_bytes()[..],
                )
                .expect("r");
            }
        }
    }
}
