//! Finished request records (DELIVERED, COMPLETED, FAILED), kept for `xmagent request` with a
//! bounded retention that costs one sled write per record.
//!
//! Records go into the newest of two generation trees (`finished.N`). When the newest one holds
//! half of `max_request_records`, a new generation starts and the oldest tree is dropped whole.
//! Retention therefore needs no order index and no per-record deletes, which matters because a
//! record is written for every delivered request; the price is that between half and all of
//! `max_request_records` of the newest finished records are kept, rather than exactly that many.
//!
//! What it does not do: it never holds unfinished records (those live in the `requests` tree,
//! where nothing prunes them) and does not decode records.

use super::Writes;
use std::sync::{Mutex, MutexGuard};

const PREFIX: &str = "finished.";

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
}

impl Finished {
    /// Open the generations in `db`, dropping any beyond the newest two (a crash during a
    /// rotation can leave three).
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
        let count = current.len() as u64;
        Ok(Self {
            db: db.clone(),
            per_generation: (max_records / 2).max(1),
            generations: Mutex::new(Generations {
                number,
                current,
                previous,
                count,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Generations> {
        // Every update below leaves the generations consistent before it can fail.
        self.generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The stored record of `request_id`, newest generation first.
    pub(super) fn get(&self, request_id: &str) -> Result<Option<sled::IVec>, sled::Error> {
        let generations = self.lock();
        if let Some(record) = generations.current.get(request_id.as_bytes())? {
            return Ok(Some(record));
        }
        match &generations.previous {
            Some((_, previous)) => previous.get(request_id.as_bytes()),
            None => Ok(None),
        }
    }

    /// Write `count` records (one batch of request id → record JSON) and start a new generation
    /// when the current one is full.
    pub(super) fn insert(&self, records: Writes) -> Result<(), sled::Error> {
        let count = records.len() as u64;
        if count == 0 {
            return Ok(());
        }
        let mut generations = self.lock();
        records.apply(&generations.current)?;
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
            drop(generations);
            if let Some(older) = dropped {
                self.db.drop_tree(tree_name(older))?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(ids: std::ops::Range<u32>) -> Writes {
        let mut writes = Writes::default();
        for id in ids {
            writes.insert(format!("r{id}"), &b"{}"[..]);
        }
        writes
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
            assert!(finished.get(&format!("r{id}")).unwrap().is_some(), "r{id}");
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
