//! A queue of entries (the inbox, the outbox) stored as one sled value per group commit instead
//! of one per entry.
//!
//! sled's cost is per key written: every insert or remove copies the leaf it lands in, logs the
//! change and later frees the old copy. With one key per request that was about half of the
//! agent's CPU under load. Here, entries appended between two flushes wait in memory; the
//! flusher [`GroupedLog::seal`]s them into one value (key: the group's first seq) written just
//! before the flush, so the 202 still waits for the flush that makes the entry durable. Entries
//! are marked [`GroupedLog::done`] one by one; a group whose entries are all done is removed at
//! the next seal. A crash before that removal is flushed brings the whole group back, which the
//! callers already handle for single entries (the central dedupes a resend, the worker
//! re-processes a request with the same requestId).
//!
//! What it does not do: it does not flush (the group commit does), decode entries, or count
//! pending bytes.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

/// One entry: its seq and stored value.
pub(super) type Entry = (u64, Vec<u8>);

/// First byte of a group value; any other is reported as corrupt.
const GROUP_MAGIC: u8 = 1;

/// The entries of one queue, durable in `tree` once sealed and flushed.
pub(super) struct GroupedLog {
    tree: sled::Tree,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Appended and not yet sealed, seqs ascending (all above every sealed seq).
    open: Vec<(u64, Vec<u8>)>,
    /// Sealed groups by key (their first seq).
    groups: BTreeMap<u64, Group>,
    /// Keys of groups whose entries are all done, removed from sled at the next seal.
    emptied: Vec<u64>,
    /// Values of sealed groups not in sled yet, so a read between the seal and the write finds
    /// their entries (a group is written before it leaves this map).
    unwritten: BTreeMap<u64, sled::IVec>,
}

struct Group {
    /// Entries not done yet: seq and stored size, seqs ascending.
    live: Vec<(u64, u64)>,
    /// Some entry is done, so the stored value holds more than `live`.
    shrunk: bool,
    /// The group's highest seq, live or not, so a seq can be placed in its group.
    last: u64,
}

/// One sealed group: write it before the flush that makes its entries durable.
pub(super) struct Sealed {
    /// The group's first seq.
    pub(super) key: u64,
    value: sled::IVec,
    /// The highest seq in the group.
    pub(super) last: u64,
    /// How many entries the group holds.
    pub(super) count: u64,
}

/// Why a stored group could not be read.
#[derive(Debug)]
pub(super) enum ReadError {
    Sled(sled::Error),
    Corrupt(&'static str),
}

impl From<sled::Error> for ReadError {
    fn from(error: sled::Error) -> Self {
        ReadError::Sled(error)
    }
}

fn encode(entries: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let size = entries.iter().map(|(_, v)| v.len() + 12).sum::<usize>() + 1;
    let mut value = Vec::with_capacity(size);
    value.push(GROUP_MAGIC);
    for (seq, entry) in entries {
        value.extend_from_slice(&seq.to_be_bytes());
        // Entries are bounded far below 4 GiB by the body limit.
        value.extend_from_slice(&(entry.len() as u32).to_be_bytes());
        value.extend_from_slice(entry);
    }
    value
}

/// The entries of one stored group, borrowed. Callers copy only the entries they keep (an ack
/// needs one of a group's many).
fn entries_of(value: &[u8]) -> Result<Vec<(u64, &[u8])>, ReadError> {
    if value.first() != Some(&GROUP_MAGIC) {
        return Err(ReadError::Corrupt("unknown entry format"));
    }
    let mut rest = &value[1..];
    let mut entries = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 12 {
            return Err(ReadError::Corrupt("truncated entry header"));
        }
        let (seq, len) = rest.split_at(8);
        let (len, body) = len.split_at(4);
        let seq = u64::from_be_bytes(seq.try_into().unwrap_or_default());
        let len = u32::from_be_bytes(len.try_into().unwrap_or_default()) as usize;
        if body.len() < len {
            return Err(ReadError::Corrupt("truncated entry"));
        }
        entries.push((seq, &body[..len]));
        rest = &body[len..];
    }
    Ok(entries)
}

impl GroupedLog {
    /// Load the groups stored in `tree`; returns the log and every stored entry, seqs ascending.
    pub(super) fn open(tree: sled::Tree) -> Result<(Self, Vec<Entry>), ReadError> {
        let mut state = State::default();
        let mut all = Vec::new();
        for item in tree.iter() {
            let (key, value) = item?;
            // The key, not the first entry: a compacted group keeps its key.
            let key: [u8; 8] = key
                .as_ref()
                .try_into()
                .map_err(|_| ReadError::Corrupt("key is not 8 bytes"))?;
            let key = u64::from_be_bytes(key);
            let entries = entries_of(&value)?;
            let Some(last) = entries.last() else {
                continue;
            };
            state.groups.insert(
                key,
                Group {
                    live: entries.iter().map(|(s, v)| (*s, v.len() as u64)).collect(),
                    shrunk: false,
                    last: last.0,
                },
            );
            all.extend(entries.into_iter().map(|(seq, v)| (seq, v.to_vec())));
        }
        all.sort_unstable_by_key(|(seq, _)| *seq);
        let log = Self {
            tree,
            state: Mutex::new(state),
        };
        Ok((log, all))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Every update leaves the state consistent before anything can panic.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append one entry under a new seq from `db`; see [`GroupedLog::append_many`].
    pub(super) fn append<E>(
        &self,
        db: &sled::Db,
        build: impl FnOnce(u64) -> Result<Vec<u8>, E>,
    ) -> Result<u64, E>
    where
        E: From<sled::Error>,
    {
        let seqs = self.append_many(db, 1, |seqs| Ok::<_, E>(vec![build(seqs[0])?]))?;
        Ok(seqs[0])
    }

    /// Append `count` entries under new seqs from `db`. `build` makes their values from the seqs
    /// and runs under the log's lock, so entries are appended, and anything `build` records
    /// happens, in seq order and before any of them can be sealed. On an error nothing is
    /// appended.
    pub(super) fn append_many<E>(
        &self,
        db: &sled::Db,
        count: usize,
        build: impl FnOnce(&[u64]) -> Result<Vec<Vec<u8>>, E>,
    ) -> Result<Vec<u64>, E>
    where
        E: From<sled::Error>,
    {
        let mut state = self.lock();
        let seqs = (0..count)
            .map(|_| db.generate_id())
            .collect::<Result<Vec<u64>, sled::Error>>()?;
        let values = build(&seqs)?;
        state.open.extend(seqs.iter().copied().zip(values));
        Ok(seqs)
    }

    /// Take the appended entries as one group, and the keys of emptied groups. The caller writes
    /// the group, then removes the emptied groups ([`GroupedLog::write`]), then flushes.
    pub(super) fn seal(&self) -> (Option<Sealed>, Vec<u64>) {
        let mut state = self.lock();
        let emptied = std::mem::take(&mut state.emptied);
        let open = std::mem::take(&mut state.open);
        let (Some(&(key, _)), Some(&(last, _))) = (open.first(), open.last()) else {
            return (None, emptied);
        };
        let value = sled::IVec::from(encode(&open));
        state.unwritten.insert(key, value.clone());
        let count = open.len() as u64;
        let live = open.iter().map(|(s, v)| (*s, v.len() as u64)).collect();
        state.groups.insert(
            key,
            Group {
                live,
                shrunk: false,
                last,
            },
        );
        (
            Some(Sealed {
                key,
                value,
                last,
                count,
            }),
            emptied,
        )
    }

    /// Write a sealed group.
    pub(super) fn write(&self, sealed: Sealed) -> Result<(), sled::Error> {
        let written = self.tree.insert(sealed.key.to_be_bytes(), sealed.value);
        // After a failed write the store is broken and takes nothing more; the entries stay
        // readable from memory until the daemon exits.
        if written.is_ok() {
            self.lock().unwritten.remove(&sealed.key);
        }
        written.map(drop)
    }

    /// Remove emptied groups from sled.
    pub(super) fn remove(&self, emptied: Vec<u64>) -> Result<(), sled::Error> {
        for key in emptied {
            self.tree.remove(key.to_be_bytes())?;
        }
        Ok(())
    }

    /// Rewrite every group that has done entries with its live ones only, so a reopen does not
    /// bring done entries back (a graceful close; a crash leaves whole groups).
    pub(super) fn compact(&self) -> Result<(), ReadError> {
        let shrunk: Vec<u64> = {
            let state = self.lock();
            state
                .groups
                .iter()
                .filter(|(_, group)| group.shrunk)
                .map(|(key, _)| *key)
                .collect()
        };
        for key in shrunk {
            let live =
                self.read_group(key, |state, seq| Self::live_group(state, seq) == Some(key))?;
            if !live.is_empty() {
                self.tree.insert(key.to_be_bytes(), encode(&live))?;
            }
        }
        Ok(())
    }

    /// Mark entry `seq` done; returns its stored size, or `None` when it was not live (done
    /// already, or never appended).
    pub(super) fn done(&self, seq: u64) -> Option<u64> {
        let mut state = self.lock();
        if let Ok(at) = state.open.binary_search_by_key(&seq, |(s, _)| *s) {
            // Never sealed (a write whose flush failed): it simply never gets written.
            return Some(state.open.remove(at).1.len() as u64);
        }
        let (&key, group) = state.groups.range_mut(..=seq).next_back()?;
        if seq > group.last {
            return None;
        }
        let at = group.live.binary_search_by_key(&seq, |(s, _)| *s).ok()?;
        let (_, size) = group.live.remove(at);
        group.shrunk = true;
        if group.live.is_empty() {
            state.groups.remove(&key);
            state.emptied.push(key);
        }
        Some(size)
    }

    /// Whether `seq` is appended and not done.
    fn live_group(state: &State, seq: u64) -> Option<u64> {
        let (&key, group) = state.groups.range(..=seq).next_back()?;
        (seq <= group.last && group.live.binary_search_by_key(&seq, |(s, _)| *s).is_ok())
            .then_some(key)
    }

    /// The value of live entry `seq` (from memory when not sealed yet).
    pub(super) fn get(&self, seq: u64) -> Result<Option<Vec<u8>>, ReadError> {
        let key = {
            let state = self.lock();
            if let Ok(at) = state.open.binary_search_by_key(&seq, |(s, _)| *s) {
                return Ok(Some(state.open[at].1.clone()));
            }
            match Self::live_group(&state, seq) {
                Some(key) => key,
                None => return Ok(None),
            }
        };
        Ok(self.read_group(key, |_, s| s == seq)?.pop().map(|(_, v)| v))
    }

    /// The entries of stored group `key` that `keep` selects (under the log's lock), copied.
    fn read_group(
        &self,
        key: u64,
        keep: impl Fn(&State, u64) -> bool,
    ) -> Result<Vec<Entry>, ReadError> {
        // Memory first: a group leaves `unwritten` only once it is in the tree.
        let unwritten = self.lock().unwritten.get(&key).cloned();
        let value = match unwritten {
            Some(value) => value,
            None => match self.tree.get(key.to_be_bytes())? {
                Some(value) => value,
                None => return Ok(Vec::new()),
            },
        };
        let entries = entries_of(&value)?;
        let state = self.lock();
        Ok(entries
            .into_iter()
            .filter(|(seq, _)| keep(&state, *seq))
            .map(|(seq, v)| (seq, v.to_vec()))
            .collect())
    }

    /// Up to `max` live sealed entries with seqs in `from..end`, ascending.
    pub(super) fn range(
        &self,
        from: u64,
        end: u64,
        max: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, ReadError> {
        if from >= end {
            return Ok(Vec::new());
        }
        let keys: Vec<u64> = {
            let state = self.lock();
            let first = state
                .groups
                .range(..=from)
                .next_back()
                .filter(|(_, group)| group.last >= from)
                .map_or(from, |(key, _)| *key);
            state
                .groups
                .range(first..end)
                .map(|(key, _)| *key)
                .collect()
        };
        let mut entries = Vec::new();
        let wanted = |state: &State, seq| {
            (from..end).contains(&seq) && Self::live_group(state, seq).is_some()
        };
        for key in keys {
            entries.extend(self.read_group(key, wanted)?);
            if entries.len() >= max {
                entries.truncate(max);
                break;
            }
        }
        Ok(entries)
    }

    /// Every live entry, seqs ascending (the worker's start-up queue).
    pub(super) fn entries(&self) -> Result<Vec<(u64, Vec<u8>)>, ReadError> {
        self.range(0, u64::MAX, usize::MAX)
    }

    /// Live entries (sealed or not).
    #[cfg(test)]
    pub(super) fn live_count(&self) -> usize {
        let state = self.lock();
        state.open.len() + state.groups.values().map(|g| g.live.len()).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn log(db: &sled::Db) -> GroupedLog {
        GroupedLog::open(db.open_tree("q").unwrap()).unwrap().0
    }

    fn seal_and_write(log: &GroupedLog) {
        let (sealed, emptied) = log.seal();
        if let Some(sealed) = sealed {
            log.write(sealed).unwrap();
        }
        log.remove(emptied).unwrap();
    }

    fn append(log: &GroupedLog, db: &sled::Db, text: &str) -> u64 {
        log.append(db, |_| Ok::<_, sled::Error>(text.as_bytes().to_vec()))
            .unwrap()
    }

    #[test]
    fn groups_survive_a_reopen_and_empty_groups_leave_sled() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        let queue = log(&db);
        let a = append(&queue, &db, "a");
        let b = append(&queue, &db, "b");
        seal_and_write(&queue);
        let c = append(&queue, &db, "c");
        seal_and_write(&queue);
        assert_eq!(db.open_tree("q").unwrap().len(), 2, "one value per group");
        assert_eq!(queue.done(a), Some(1));
        assert_eq!(queue.done(a), None, "done twice");
        assert_eq!(queue.get(b).unwrap(), Some(b"b".to_vec()));
        assert_eq!(queue.get(a).unwrap(), None);
        drop(queue);
        let (queue, entries) = GroupedLog::open(db.open_tree("q").unwrap()).unwrap();
        // The done mark on `a` was never written: the whole group comes back.
        assert_eq!(
            entries,
            vec![(a, b"a".to_vec()), (b, b"b".to_vec()), (c, b"c".to_vec())]
        );
        for seq in [a, b] {
            queue.done(seq);
        }
        seal_and_write(&queue);
        assert_eq!(db.open_tree("q").unwrap().len(), 1, "emptied group removed");
        assert_eq!(queue.entries().unwrap(), vec![(c, b"c".to_vec())]);
        // A graceful close compacts a partly done group.
        let d = append(&queue, &db, "d");
        let e = append(&queue, &db, "e");
        seal_and_write(&queue);
        queue.done(c);
        queue.done(d);
        seal_and_write(&queue);
        queue.compact().unwrap();
        drop(queue);
        let (queue, entries) = GroupedLog::open(db.open_tree("q").unwrap()).unwrap();
        assert_eq!(entries, vec![(e, b"e".to_vec())]);
        queue.done(e);
        seal_and_write(&queue);
        assert!(
            db.open_tree("q").unwrap().is_empty(),
            "compacted group removed by its key"
        );
    }

    #[test]
    fn corrupt_values_are_reported_not_guessed() {
        for bad in [
            &b"\x01\x00\x00"[..],
            b"\x01\0\0\0\0\0\0\0\x01\0\0\0\x09ab",
            b"x",
            b"{\"old\":1}",
        ] {
            assert!(entries_of(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        /// Whatever the interleaving of appends, seals, done marks and reopens, the log holds
        /// exactly the entries a simple model says are live, except that done marks not followed
        /// by a seal are forgotten by a reopen (whole groups come back).
        #[test]
        fn matches_a_model(ops in proptest::collection::vec(0u8..4, 1..60)) {
            let dir = tempfile::tempdir().unwrap();
            let db = sled::open(dir.path()).unwrap();
            let mut queue = log(&db);
            let mut model: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
            let mut counter = 0u32;
            for op in ops {
                match op {
                    0 => {
                        counter += 1;
                        let text = format!("e{counter}");
                        let seq = append(&queue, &db, &text);
                        model.insert(seq, text.into_bytes());
                    }
                    1 => seal_and_write(&queue),
                    2 => {
                        if let Some(&seq) = model.keys().next() {
                            prop_assert!(queue.done(seq).is_some());
                            model.remove(&seq);
                        }
                    }
                    _ => {
                        seal_and_write(&queue);
                        drop(queue);
                        let (reopened, entries) =
                            GroupedLog::open(db.open_tree("q").unwrap()).unwrap();
                        // Every live entry comes back; done entries of groups that still
                        // have live ones come back too, and become live again.
                        for (seq, value) in &model {
                            prop_assert!(entries.contains(&(*seq, value.clone())));
                        }
                        queue = reopened;
                        model = entries.into_iter().collect();
                    }
                }
                let mut live = queue.entries().unwrap();
                let state_open: Vec<(u64, Vec<u8>)> = queue.lock().open.clone();
                live.extend(state_open);
                live.sort_unstable_by_key(|(s, _)| *s);
                let expected: Vec<(u64, Vec<u8>)> =
                    model.iter().map(|(s, v)| (*s, v.clone())).collect();
                prop_assert_eq!(live, expected);
                prop_assert_eq!(queue.live_count(), model.len());
            }
        }
    }
}
