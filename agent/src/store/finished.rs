//! Finished request records (DELIVERED, COMPLETED, FAILED), kept for `xmagent request` with a
//! bounded retention that costs one sled write per batch of records.
//!
//! Records are written in batches (all the records one answer from the central finished), one
//! sled value per batch under a fresh id, into the newest of two generation trees
//! (`finished.N`). An in-memory index maps each request id to its batch; it is rebuilt from the
//! two generations at open. When the newest generation holds half of `max_request_records`, a new
//! one starts and the oldest tree is dropped whole. Retention therefore needs no order index and
//! no per-record deletes; the price is that between half and all of `max_request_records` of the
//! newest finished records are kept, rather than exactly that many.
//!
//! Why batches: a record is written for every delivered request, and sled's cost is per key
//! written, most of all at a random place in the tree (request ids are random). One key per
//! batch cut that to a fraction.
//!
//! Stores written before batches kept one record per request id key; open rewrites those as one
//! batch per generation (the batch first, then the removals, so a crash in between only leaves
//! duplicates the next open removes).
//!
//! Records are kept in a compact binary form ([`encode_record`]), not JSON: sled keeps what it
//! stores in memory, so the retention costs RSS in proportion to the bytes per record (about
//! 250 as JSON, under 150 in this form).
//!
//! What it does not do: it never holds unfinished records (those live in the `requests` tree,
//! where nothing prunes them).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

use super::{EventRef, RequestRecord, RequestStatus, StoreError};

const PREFIX: &str = "finished.";

/// First byte of a batch value.
const BATCH_MAGIC: u8 = 1;

/// First byte of a record in the compact form.
const RECORD_MAGIC: u8 = 2;

fn tree_name(number: u64) -> String {
    format!("{PREFIX}{number:020}")
}

/// The finished-record generations of one store.
pub(super) struct Finished {
    db: sled::Db,
    /// Records per generation: half of the configured retention (at least one).
    per_generation: u64,
    generations: Mutex<Generations>,
}

struct Generations {
    number: u64,
    current: sled::Tree,
    /// The older generation and its number, if there is one.
    previous: Option<(u64, sled::Tree)>,
    /// Records written to `current` (rewrites of one request count again; the bound stays loose
    /// in the safe direction).
    count: u64,
    /// The lowest batch key in `current` (`u64::MAX` while it is empty). Batch keys are ids
    /// from one counter, so every key of the previous generation is lower: the key alone says
    /// which tree holds a batch.
    current_from: u64,
    /// The lowest batch key in `previous`.
    previous_from: u64,
    /// Request id digest → the key of its newest batch. A 64-bit digest, not the id: the index
    /// holds every kept record and must stay small. A batch lookup compares the full id, so a
    /// digest collision (odds ≈ 1e-10 at 100k records) can only hide one of two records.
    index: HashMap<u64, u64>,
}

fn digest(request_id: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    request_id.hash(&mut hasher);
    hasher.finish()
}

/// A batch value from (request id, stored record) pairs.
fn encode<'a>(records: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Vec<u8> {
    let mut value = vec![BATCH_MAGIC];
    for (request_id, record) in records {
        // Request ids and records are far below 4 GiB (bounded by the body limit).
        put_field(&mut value, request_id.as_bytes());
        put_field(&mut value, record);
    }
    value
}

/// The records (request id, record JSON) of one batch value.
/// One decoded record: request id and record JSON, borrowed from the batch value.
type RecordRef<'a> = (&'a [u8], &'a [u8]);

fn corrupt(what: &str) -> sled::Error {
    sled::Error::Unsupported(format!("finished record batch: {what}"))
}

/// The next length-prefixed field of a batch value.
fn take_field<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], sled::Error> {
    if rest.len() < 4 {
        return Err(corrupt("truncated length"));
    }
    let (len, tail) = rest.split_at(4);
    let len = u32::from_be_bytes(len.try_into().unwrap_or_default()) as usize;
    if tail.len() < len {
        return Err(corrupt("truncated field"));
    }
    let (field, tail) = tail.split_at(len);
    *rest = tail;
    Ok(field)
}

fn decode(value: &[u8]) -> Result<Vec<RecordRef<'_>>, sled::Error> {
    if value.first() != Some(&BATCH_MAGIC) {
        return Err(corrupt("unknown format"));
    }
    let mut rest = &value[1..];
    let mut records = Vec::new();
    while !rest.is_empty() {
        let request_id = take_field(&mut rest)?;
        let record = take_field(&mut rest)?;
        records.push((request_id, record));
    }
    Ok(records)
}

fn put_field(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_be_bytes());
    out.extend_from_slice(field);
}

/// A finished record in the compact form, without its request id (the batch holds that).
fn encode_record(record: &RequestRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    out.push(RECORD_MAGIC);
    out.push(match record.status {
        RequestStatus::Accepted => 0,
        RequestStatus::Queued => 1,
        RequestStatus::Delivered => 2,
        RequestStatus::Completed => 3,
        RequestStatus::Failed => 4,
    });
    put_field(&mut out, record.integration_id.as_bytes());
    put_field(&mut out, record.received_at.as_bytes());
    match &record.reason {
        Some(reason) => {
            out.push(1);
            put_field(&mut out, reason.as_bytes());
        }
        None => out.push(0),
    }
    out.extend_from_slice(&(record.events.len() as u32).to_be_bytes());
    for event in &record.events {
        out.extend_from_slice(&event.index.to_be_bytes());
        out.extend_from_slice(&event.seq.to_be_bytes());
        // An empty id means "not acknowledged" (the central never hands out an empty one).
        put_field(
            &mut out,
            event.event_id.as_deref().unwrap_or_default().as_bytes(),
        );
    }
    out
}

fn take_bytes<const N: usize>(rest: &mut &[u8]) -> Result<[u8; N], sled::Error> {
    if rest.len() < N {
        return Err(corrupt("truncated record"));
    }
    let (head, tail) = rest.split_at(N);
    *rest = tail;
    Ok(head.try_into().unwrap_or([0; N]))
}

fn take_text(rest: &mut &[u8]) -> Result<String, sled::Error> {
    let field = take_field(rest)?;
    String::from_utf8(field.to_vec()).map_err(|_| corrupt("text is not UTF-8"))
}

/// Read a stored record in the compact form.
fn decode_record(request_id: &str, mut rest: &[u8]) -> Result<RequestRecord, StoreError> {
    let [magic, status] = take_bytes(&mut rest)?;
    if magic != RECORD_MAGIC {
        return Err(corrupt("unknown record format").into());
    }
    let status = match status {
        0 => RequestStatus::Accepted,
        1 => RequestStatus::Queued,
        2 => RequestStatus::Delivered,
        3 => RequestStatus::Completed,
        4 => RequestStatus::Failed,
        _ => return Err(corrupt("unknown status").into()),
    };
    let integration_id = take_text(&mut rest)?;
    let received_at = take_text(&mut rest)?;
    let reason = match take_bytes::<1>(&mut rest)? {
        [0] => None,
        _ => Some(take_text(&mut rest)?),
    };
    let count = u32::from_be_bytes(take_bytes(&mut rest)?);
    let mut events = Vec::new();
    for _ in 0..count {
        let index = u32::from_be_bytes(take_bytes(&mut rest)?);
        let seq = u64::from_be_bytes(take_bytes(&mut rest)?);
        let event_id = Some(take_text(&mut rest)?).filter(|id| !id.is_empty());
        events.push(EventRef {
            index,
            seq,
            event_id,
        });
    }
    Ok(RequestRecord {
        request_id: request_id.to_owned(),
        integration_id,
        status,
        received_at,
        events,
        reason,
    })
}

impl Finished {
    /// Open the generations in `db`, dropping any beyond the newest two (a crash during a
    /// rotation can leave three), and index their records.
    pub(super) fn open(db: &sled::Db, max_records: u64) -> Result<Self, sled::Error> {
        let mut numbers: Vec<u64> = db
            .tree_names()
            .iter()
            .filter_map(|name| {
                std::str::from_utf8(name)
                    .ok()?
                    .strip_prefix(PREFIX)?
                    .parse()
                    .ok()
            })
            .collect();
        numbers.sort_unstable();
        while numbers.len() > 2 {
            db.drop_tree(tree_name(numbers.remove(0)))?;
        }
        let number = numbers.last().copied().unwrap_or(0);
        let current = db.open_tree(tree_name(number))?;
        let previous = match numbers.as_slice() {
            [older, _] => Some((*older, db.open_tree(tree_name(*older))?)),
            _ => None,
        };
        let mut index = HashMap::new();
        let mut count = 0;
        let (mut current_from, mut previous_from) = (u64::MAX, u64::MAX);
        // Oldest first, so the newest batch of a rewritten record wins.
        let trees = previous
            .iter()
            .map(|(n, t)| (*n, t))
            .chain([(number, &current)]);
        for (generation, tree) in trees {
            // Batch keys are increasing ids, so iteration is oldest first too.
            for item in tree.iter() {
                let (key, value) = item?;
                let key = key
                    .as_ref()
                    .try_into()
                    .map(u64::from_be_bytes)
                    .map_err(|_| {
                        sled::Error::Unsupported("finished record batch: key is not an id".into())
                    })?;
                let records = decode(&value)?;
                if generation == number {
                    count += records.len() as u64;
                    current_from = current_from.min(key);
                } else {
                    previous_from = previous_from.min(key);
                }
                for (request_id, _) in records {
                    index.insert(digest(&String::from_utf8_lossy(request_id)), key);
                }
            }
        }
        Ok(Self {
            db: db.clone(),
            per_generation: (max_records / 2).max(1),
            generations: Mutex::new(Generations {
                number,
                current,
                previous,
                count,
                current_from,
                previous_from,
                index,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Generations> {
        // Every update below leaves the generations consistent before it can fail.
        self.generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stored record of `request_id`.
    pub(super) fn get(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        let generations = self.lock();
        let Some(key) = generations.index.get(&digest(request_id)).copied() else {
            return Ok(None);
        };
        let tree = if key >= generations.current_from {
            &generations.current
        } else {
            match &generations.previous {
                Some((_, tree)) if key >= generations.previous_from => tree,
                _ => return Ok(None),
            }
        };
        let Some(value) = tree.get(key.to_be_bytes())? else {
            return Ok(None);
        };
        let found = decode(&value)?
            .into_iter()
            .find(|(id, _)| *id == request_id.as_bytes());
        found
            .map(|(_, record)| decode_record(request_id, record))
            .transpose()
    }

    /// Write `records` as one batch and start a new generation when the current one is full.
    pub(super) fn insert(&self, records: &[&RequestRecord]) -> Result<(), sled::Error> {
        let count = records.len() as u64;
        if count == 0 {
            return Ok(());
        }
        let key = self.db.generate_id()?;
        let stored: Vec<Vec<u8>> = records.iter().map(|record| encode_record(record)).collect();
        let value = encode(
            records
                .iter()
                .zip(&stored)
                .map(|(record, stored)| (record.request_id.as_str(), stored.as_slice())),
        );
        let mut generations = self.lock();
        generations.current.insert(key.to_be_bytes(), value)?;
        generations.current_from = generations.current_from.min(key);
        for record in records {
            generations.index.insert(digest(&record.request_id), key);
        }
        generations.count += count;
        if generations.count >= self.per_generation {
            let number = generations.number + 1;
            let next = self.db.open_tree(tree_name(number))?;
            let full = std::mem::replace(&mut generations.current, next);
            let full_number = generations.number;
            let dropped = generations
                .previous
                .replace((full_number, full))
                .map(|(older, _)| older);
            generations.number = number;
            generations.count = 0;
            generations.previous_from = generations.current_from;
            generations.current_from = u64::MAX;
            if let Some(older) = dropped {
                let kept_from = generations.previous_from;
                generations.index.retain(|_, key| *key >= kept_from);
                drop(generations);
                self.db.drop_tree(tree_name(older))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, integration: &str) -> RequestRecord {
        RequestRecord {
            request_id: id.into(),
            integration_id: integration.into(),
            status: RequestStatus::Delivered,
            received_at: "2026-11-29T02:00:00Z".into(),
            events: vec![EventRef {
                index: 0,
                seq: 42,
                event_id: Some(format!("event-of-{id}")),
            }],
            reason: None,
        }
    }

    fn insert(finished: &Finished, ids: std::ops::Range<u32>) {
        let records: Vec<RequestRecord> = ids.map(|id| record(&format!("r{id}"), "int")).collect();
        finished
            .insert(&records.iter().collect::<Vec<_>>())
            .unwrap();
    }

    #[test]
    fn keeps_between_half_and_all_of_the_retention_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let finished = Finished::open(&db, 10).unwrap();
        for id in 0..23 {
            insert(&finished, id..id + 1);
        }
        // 23 records, 5 per generation: 20..23 in the current one, 15..20 in the previous one.
        assert!(finished.get("r14").unwrap().is_none());
        for id in 15..23 {
            let id = format!("r{id}");
            assert_eq!(finished.get(&id).unwrap(), Some(record(&id, "int")));
        }
        drop(finished);
        let finished = Finished::open(&db, 10).unwrap();
        assert!(finished.get("r15").unwrap().is_some());
        insert(&finished, 23..25);
        assert!(
            finished.get("r15").unwrap().is_none(),
            "rotated after reopen"
        );
        assert!(finished.get("r20").unwrap().is_some());
        let trees = db
            .tree_names()
            .iter()
            .filter(|name| name.starts_with(PREFIX.as_bytes()))
            .count();
        assert_eq!(trees, 2, "only two generations stay on disk");
    }

    #[test]
    fn a_batch_is_one_value_and_a_rewrite_wins_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let finished = Finished::open(&db, 1000).unwrap();
        insert(&finished, 0..50);
        let mut failed = record("r7", "other");
        failed.status = RequestStatus::Failed;
        failed.reason = Some("the central refused it".into());
        failed.events.push(EventRef {
            index: 1,
            seq: 43,
            event_id: None,
        });
        finished.insert(&[&failed]).unwrap();
        assert_eq!(db.open_tree(tree_name(0)).unwrap().len(), 2);
        for finished in [finished, Finished::open(&db, 1000).unwrap()] {
            assert_eq!(finished.get("r7").unwrap(), Some(failed.clone()));
            assert_eq!(finished.get("r49").unwrap(), Some(record("r49", "int")));
            assert_eq!(finished.get("r50").unwrap(), None);
        }
    }

    #[test]
    fn corrupt_batches_and_records_are_reported() {
        for bad in [&b"\x01\x00\x00"[..], b"\x01\0\0\0\x05ab", b"x"] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
        let good = encode_record(&record("r", "int"));
        for cut in 1..good.len() {
            assert!(decode_record("r", &good[..cut]).is_err(), "cut at {cut}");
        }
        assert!(decode_record("r", b"\x07\x02").is_err(), "unknown form");
        let json = serde_json::to_vec(&record("r", "int")).unwrap();
        assert!(decode_record("r", &json).is_err(), "JSON is no stored form");
    }

    #[test]
    fn a_leftover_third_generation_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        for number in [3, 4, 5] {
            let id = format!("r{number}");
            let stored = encode_record(&record(&id, "int"));
            db.open_tree(tree_name(number))
                .unwrap()
                // Batch keys grow from one generation to the next.
                .insert(
                    number.to_be_bytes(),
                    encode([(id.as_str(), stored.as_slice())]),
                )
                .unwrap();
        }
        for _ in 0..2 {
            // Twice: the first open drops the oldest generation, the second finds two.
            let finished = Finished::open(&db, 10).unwrap();
            assert!(finished.get("r3").unwrap().is_none());
            assert!(finished.get("r4").unwrap().is_some(), "previous generation");
            assert!(finished.get("r5").unwrap().is_some());
        }
    }
}
