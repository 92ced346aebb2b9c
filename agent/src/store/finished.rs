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
//! What it does not do: it never holds unfinished records (those live in the `requests` tree,
//! where nothing prunes them) and does not decode records.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Mutex, MutexGuard};

const PREFIX: &str = "finished.";

/// First byte of a batch value (a legacy single record is JSON and starts with `{`).
const BATCH_MAGIC: u8 = 1;

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

/// Where a record is: the key of its batch in one of the generation trees.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Place {
    generation: u64,
    key: u64,
}

struct Generations {
    number: u64,
    current: sled::Tree,
    /// The older generation and its number, if there is one.
    previous: Option<(u64, sled::Tree)>,
    /// Records written to `current` (rewrites of one request count again; the bound stays loose
    /// in the safe direction).
    count: u64,
    /// Request id digest → its newest batch. A digest, not the id: the index holds every kept
    /// record and must stay small; a batch lookup compares the full id.
    index: HashMap<u128, Place>,
}

/// A 128-bit digest of a request id (two keyed SipHash passes); a collision only makes one of
/// the two records unfindable, never returns the wrong one.
fn digest(request_id: &str) -> u128 {
    let half = |salt: u8| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        salt.hash(&mut hasher);
        request_id.hash(&mut hasher);
        hasher.finish()
    };
    (u128::from(half(0)) << 64) | u128::from(half(1))
}

fn encode(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let size = records
        .iter()
        .map(|(id, r)| id.len() + r.len() + 8)
        .sum::<usize>()
        + 1;
    let mut value = Vec::with_capacity(size);
    value.push(BATCH_MAGIC);
    for (request_id, record) in records {
        // Request ids and records are far below 4 GiB (bounded by the body limit).
        value.extend_from_slice(&(request_id.len() as u32).to_be_bytes());
        value.extend_from_slice(request_id.as_bytes());
        value.extend_from_slice(&(record.len() as u32).to_be_bytes());
        value.extend_from_slice(record);
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
        // Oldest first, so the newest batch of a rewritten record wins.
        let trees = previous
            .iter()
            .map(|(n, t)| (*n, t))
            .chain([(number, &current)]);
        for (generation, tree) in trees {
            Self::batch_legacy_records(db, tree)?;
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
                }
                for (request_id, _) in records {
                    let request_id = String::from_utf8_lossy(request_id);
                    index.insert(digest(&request_id), Place { generation, key });
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
                index,
            }),
        })
    }

    /// Rewrite records stored one per request id (before batches) as one batch.
    fn batch_legacy_records(db: &sled::Db, tree: &sled::Tree) -> Result<(), sled::Error> {
        let mut legacy = Vec::new();
        for item in tree.iter() {
            let (key, value) = item?;
            if value.first() == Some(&b'{') {
                legacy.push((String::from_utf8_lossy(&key).into_owned(), value.to_vec()));
            }
        }
        if legacy.is_empty() {
            return Ok(());
        }
        tree.insert(db.generate_id()?.to_be_bytes(), encode(&legacy))?;
        for (request_id, _) in legacy {
            tree.remove(request_id.as_bytes())?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Generations> {
        // Every update below leaves the generations consistent before it can fail.
        self.generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stored record of `request_id`.
    pub(super) fn get(&self, request_id: &str) -> Result<Option<Vec<u8>>, sled::Error> {
        let generations = self.lock();
        let Some(place) = generations.index.get(&digest(request_id)).copied() else {
            return Ok(None);
        };
        let tree = if place.generation == generations.number {
            &generations.current
        } else {
            match &generations.previous {
                Some((number, tree)) if *number == place.generation => tree,
                _ => return Ok(None),
            }
        };
        let Some(value) = tree.get(place.key.to_be_bytes())? else {
            return Ok(None);
        };
        Ok(decode(&value)?
            .into_iter()
            .find(|(id, _)| *id == request_id.as_bytes())
            .map(|(_, record)| record.to_vec()))
    }

    /// Write `records` (request id → record JSON) as one batch and start a new generation when
    /// the current one is full.
    pub(super) fn insert(&self, records: Vec<(String, Vec<u8>)>) -> Result<(), sled::Error> {
        let count = records.len() as u64;
        if count == 0 {
            return Ok(());
        }
        let key = self.db.generate_id()?;
        let value = encode(&records);
        let mut generations = self.lock();
        generations.current.insert(key.to_be_bytes(), value)?;
        let generation = generations.number;
        for (request_id, _) in &records {
            generations
                .index
                .insert(digest(request_id), Place { generation, key });
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
            if let Some(older) = dropped {
                generations
                    .index
                    .retain(|_, place| place.generation != older);
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

    fn records(ids: std::ops::Range<u32>) -> Vec<(String, Vec<u8>)> {
        ids.map(|id| (format!("r{id}"), format!("{{\"n\":{id}}}").into_bytes()))
            .collect()
    }

    #[test]
    fn keeps_between_half_and_all_of_the_retention_across_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let finished = Finished::open(&db, 10).unwrap();
        for id in 0..23 {
            finished.insert(records(id..id + 1)).unwrap();
        }
        // 23 records, 5 per generation: 20..23 in the current one, 15..20 in the previous one.
        assert!(finished.get("r14").unwrap().is_none());
        for id in 15..23 {
            let record = finished.get(&format!("r{id}")).unwrap();
            assert_eq!(
                record,
                Some(format!("{{\"n\":{id}}}").into_bytes()),
                "r{id}"
            );
        }
        drop(finished);
        let finished = Finished::open(&db, 10).unwrap();
        assert!(finished.get("r15").unwrap().is_some());
        finished.insert(records(23..25)).unwrap();
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
        finished.insert(records(0..50)).unwrap();
        finished
            .insert(vec![("r7".into(), b"{\"n\":\"again\"}".to_vec())])
            .unwrap();
        assert_eq!(db.open_tree(tree_name(0)).unwrap().len(), 2);
        for finished in [finished, Finished::open(&db, 1000).unwrap()] {
            assert_eq!(
                finished.get("r7").unwrap(),
                Some(b"{\"n\":\"again\"}".to_vec())
            );
            assert_eq!(finished.get("r49").unwrap(), Some(b"{\"n\":49}".to_vec()));
            assert_eq!(finished.get("r50").unwrap(), None);
        }
    }

    #[test]
    fn legacy_records_keyed_by_request_id_are_still_found() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        db.open_tree(tree_name(0))
            .unwrap()
            .insert("old-request", &b"{\"old\":true}"[..])
            .unwrap();
        let finished = Finished::open(&db, 1000).unwrap();
        assert_eq!(
            finished.get("old-request").unwrap(),
            Some(b"{\"old\":true}".to_vec())
        );
        assert_eq!(
            db.open_tree(tree_name(0)).unwrap().len(),
            1,
            "rewritten as a batch"
        );
        finished.insert(records(0..1)).unwrap();
        assert!(finished.get("r0").unwrap().is_some());
    }

    #[test]
    fn corrupt_batches_are_reported() {
        for bad in [&b"\x01\x00\x00"[..], b"\x01\0\0\0\x05ab", b"x"] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_leftover_third_generation_is_dropped_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        for number in [3, 4, 5] {
            db.open_tree(tree_name(number))
                .unwrap()
                .insert(format!("r{number}"), &b"{}"[..])
                .unwrap();
        }
        let finished = Finished::open(&db, 10).unwrap();
        assert!(finished.get("r3").unwrap().is_none());
        assert!(finished.get("r4").unwrap().is_some());
        assert!(finished.get("r5").unwrap().is_some());
    }
}
