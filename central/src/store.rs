//! The central's event store (sled): events, the idempotency index and the lookups REST
//! queries need, plus a group commit so one flush makes many writes durable.
//!
//! Layout: one sled tree, `events`, holding one value per write batch under `b` ‖ the first
//! event id of the batch (16 bytes). A batch value ([`batch`]) holds, for each event, its id,
//! agent, request id and index, then the event JSON. Event ids are time-ordered UUIDs (version
//! 7) handed out in increasing order under the writer lock (never below the newest stored one,
//! whatever the clock does), so:
//! - a scan of `b` lists events oldest first, and new events never shift earlier pages;
//! - an event is found by its id alone: it is in the last batch whose key is at or below it.
//!
//! The idempotency check and the `requestId` filter use an in-memory index, rebuilt at open
//! from the batch heads: a 64-bit digest of the request id maps to the batches holding events
//! of that request. A digest that is absent means "new", so the usual create reads nothing; a
//! present one (a resend, or a rare collision) is checked against the batch's heads.
//!
//! Why batches: sled's cost is per key written, most of all at a random place in the tree. The
//! previous layout wrote two keys per event (the event, and an index key at a random place) and
//! the store took about half of the central's CPU under load; one key per batch, written at the
//! end of the tree, removes most of it (`create_batch` of 1.3 KB events in batches of 64:
//! 21–28 µs → 4.3 µs per event on the 2-core machine, `ws::tests::ingest_costs`).
//!
//! A batch is one sled insert, so it is atomic: a crash never leaves an event without its
//! idempotency key (which would create a second event on resend). Writers are serialized by a
//! mutex held for the duplicate checks, id assignment, JSON writing and the insert, never across
//! an `.await`. A status change rewrites its event's batch (status changes are rare).
//!
//! What this module does NOT do: validate triggers (see [`crate::event`]) or authenticate.

mod batch;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use uuid::Uuid;

use crate::event::{self, Status};
use batch::Entry;

/// Why a store operation failed. Callers map these to "try again later" (503 / retryable).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an I/O or corruption problem.
    #[error("event store: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value could not be decoded; the data directory was altered or is corrupt.
    #[error("event store holds an unreadable event {id}: {reason}")]
    Corrupt {
        /// The event id (or batch) whose value is bad.
        id: String,
        /// The decoding error.
        reason: String,
    },
    /// A blocking store task could not complete (runtime shutting down).
    #[error("event store task failed: {0}")]
    Task(String),
    /// Making flushed data stable (fsync) failed.
    #[error("event store: cannot sync to disk: {0}")]
    Sync(#[from] std::io::Error),
}

/// One event to create: validated, its JSON written only once the store knows it is new and
/// has given it an id (duplicates never pay for it).
pub trait NewEvent {
    /// The agent's request id.
    fn request_id(&self) -> &str;
    /// Position among the events of the request.
    fn index(&self) -> u32;
    /// The event JSON, whose `id` is `event_id`. Called under the store's writer lock.
    fn to_json(&self, event_id: &str) -> Vec<u8>;
}

/// The result of writing one [`NewEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The event id to acknowledge: the new one, or the one created earlier for the same key.
    pub event_id: String,
    /// True when the key existed already and nothing was written.
    pub duplicate: bool,
}

/// The outcome of a status change.
#[derive(Debug, Clone, PartialEq)]
pub enum StatusChange {
    /// No event has this id.
    NotFound,
    /// The event (after the change).
    Changed(Value),
    /// The event is terminated; xMatters does not reopen terminated events.
    Terminated(Value),
}

/// Filters for listing events, as the REST `GET /api/xm/1/events` accepts them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Query {
    /// Only events created for this agent request id (uses the request index).
    pub request_id: Option<String>,
    /// Only events in this status.
    pub status: Option<Status>,
    /// Only events with this property name (without `#locale`) and value.
    pub property: Option<(String, String)>,
    /// Only events relayed by this agent (REST callers limited to their own agent).
    pub agent_id: Option<String>,
    /// Only events of these integrations (script callers limited to their integrations).
    pub integration_ids: Option<Vec<String>>,
    /// Only events created at or after this time, in Unix milliseconds (read from the
    /// time-ordered id, so batches before it are not read).
    pub created_from_ms: Option<u64>,
    /// Only events created before this time, in Unix milliseconds.
    pub created_until_ms: Option<u64>,
    /// List the newest events first (the console), instead of the oldest (REST).
    pub newest_first: bool,
    /// How many matching events to skip.
    pub offset: usize,
    /// The most events to return.
    pub limit: usize,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    /// How many events match the filters in total.
    pub total: usize,
    /// The events of this page, oldest first.
    pub events: Vec<Value>,
}

/// A cheap-to-clone handle to the event store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    /// fsync after sled's flush, so an ack means the event is on stable storage.
    disk: durable::DiskSync,
    tree: sled::Tree,
    /// Serializes read-check-write sequences (dedupe checks + insert, status read + write),
    /// hands out event ids in the order their batches are written, and guards the index.
    writer: Mutex<Writer>,
    /// Bumped after every write; a write with generation g is durable once `flushed >= g`.
    written: AtomicU64,
    /// The highest generation a completed flush covers. Holding the lock means "I am flushing",
    /// so concurrent waiters queue behind one flush instead of each starting their own.
    flushed: tokio::sync::Mutex<u64>,
}

/// What the writer lock guards.
struct Writer {
    ids: IdClock,
    index: Index,
}

/// The in-memory lookups, rebuilt from the batch heads at open.
#[derive(Default)]
struct Index {
    /// Request id digest → the batches holding events of that request, oldest first.
    by_request: HashMap<u64, Batches>,
    /// Events in the store.
    total: usize,
}

/// The batch keys of one request digest; almost always one, so that case needs no allocation.
enum Batches {
    One(u128),
    Many(Vec<u128>),
}

impl Batches {
    fn keys(&self) -> &[u128] {
        match self {
            Self::One(key) => std::slice::from_ref(key),
            Self::Many(keys) => keys,
        }
    }
}

impl Index {
    /// Record that batch `key` holds an event of the request with this digest. Batches are
    /// added in key order, so repeating the last key is the only duplicate to skip.
    fn add(&mut self, digest: u64, key: u128) {
        match self.by_request.entry(digest) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Batches::One(key));
            }
            std::collections::hash_map::Entry::Occupied(mut slot) => {
                let batches = slot.get_mut();
                if batches.keys().last() == Some(&key) {
                    return;
                }
                match batches {
                    Batches::One(first) => *batches = Batches::Many(vec![*first, key]),
                    Batches::Many(keys) => keys.push(key),
                }
            }
        }
    }

    fn batches_of(&self, request_id: &str) -> Vec<u128> {
        self.by_request
            .get(&request_digest(request_id))
            .map(|batches| batches.keys().to_vec())
            .unwrap_or_default()
    }
}

fn request_digest(request_id: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    request_id.hash(&mut hasher);
    hasher.finish()
}

/// Hands out version 7 UUIDs (milliseconds since the epoch, then a counter and random bits),
/// each greater than the one before and than every id in the store, even if the clock goes
/// back. Within the process [`uuid::ContextV7`] keeps them increasing; `last` covers ids stored
/// by an earlier run whose clock was ahead.
struct IdClock {
    context: uuid::ContextV7,
    last: u128,
}

impl IdClock {
    /// A clock whose ids all go above `last` (the newest stored id, 0 for none).
    fn after(last: u128) -> Self {
        Self {
            context: uuid::ContextV7::new(),
            last,
        }
    }

    fn next(&mut self) -> Uuid {
        let mut id = Uuid::new_v7(uuid::Timestamp::now(&self.context));
        if id.as_u128() <= self.last {
            // Continue one millisecond after the newest stored id; the context keeps that time
            // (counting up) until the clock passes it.
            let millis = u64::try_from(self.last >> 80).unwrap_or(u64::MAX) + 1;
            let at = uuid::Timestamp::from_unix(
                &self.context,
                millis / 1000,
                (millis % 1000) as u32 * 1_000_000,
            );
            id = Uuid::new_v7(at);
        }
        self.last = id.as_u128();
        id
    }
}

const BATCH: u8 = b'b';

fn batch_key(first_id: u128) -> [u8; 17] {
    let mut key = [BATCH; 17];
    key[1..].copy_from_slice(&first_id.to_be_bytes());
    key
}

fn key_of(sled_key: &[u8]) -> Result<u128, StoreError> {
    sled_key
        .get(1..)
        .and_then(|id| <[u8; 16]>::try_from(id).ok())
        .map(u128::from_be_bytes)
        .ok_or_else(|| StoreError::Corrupt {
            id: "(batch key)".to_owned(),
            reason: format!("{} bytes long", sled_key.len()),
        })
}

fn decode_batch(key: u128, value: &[u8]) -> Result<batch::Batch<'_>, StoreError> {
    batch::decode(value).map_err(|reason| StoreError::Corrupt {
        id: format!("(batch {})", Uuid::from_u128(key)),
        reason,
    })
}

/// The smallest event id minted at `millis` (a UUID v7 starts with its Unix milliseconds), so
/// trees keyed by event id can be scanned by time.
pub fn first_id_at(millis: u64) -> u128 {
    u128::from(millis) << 80
}

/// When event `id` was minted, in Unix milliseconds, if it is one of this store's ids.
pub fn created_ms(id: &str) -> Option<u64> {
    parse_id(id).map(|uuid| (uuid.as_u128() >> 80) as u64)
}

fn id_text(id: u128) -> String {
    Uuid::from_u128(id).hyphenated().to_string()
}

/// `id` as a UUID if it is spelled exactly as this store writes ids (lower-case, hyphenated),
/// so lookups match the same texts they always did.
fn parse_id(id: &str) -> Option<Uuid> {
    let uuid = Uuid::try_parse(id).ok()?;
    let mut buffer = uuid::Uuid::encode_buffer();
    (uuid.hyphenated().encode_lower(&mut buffer) == id).then_some(uuid)
}

fn decode(id: &str, bytes: &[u8]) -> Result<Value, StoreError> {
    serde_json::from_slice(bytes).map_err(|error| StoreError::Corrupt {
        id: id.to_owned(),
        reason: error.to_string(),
    })
}

impl Store {
    /// Open (or create) the store in `dir`, rebuilding the index.
    /// Blocking: call it from a blocking context or at start-up.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .segment_size(durable::SEGMENT_BYTES)
            .open()?;
        let tree = db.open_tree("events")?;
        let mut index = Index::default();
        let mut last = 0;
        for item in tree.scan_prefix([BATCH]) {
            let (sled_key, value) = item?;
            let key = key_of(&sled_key)?;
            let batch = decode_batch(key, &value)?;
            for entry in &batch.entries {
                index.add(request_digest(entry.request_id), key);
                last = last.max(entry.id);
            }
            index.total += batch.entries.len();
        }
        let disk = durable::DiskSync::open(dir)?;
        Ok(Self {
            inner: Arc::new(Inner {
                tree,
                db,
                disk,
                writer: Mutex::new(Writer {
                    ids: IdClock::after(last),
                    index,
                }),
                written: AtomicU64::new(0),
                flushed: tokio::sync::Mutex::new(0),
            }),
        })
    }

    /// Another tree of the same database, for data that must become durable with the events
    /// (notifications and their flood-control counts): [`Store::wait_durable`] covers it too.
    pub fn tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.inner.db.open_tree(name)?)
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A panic in another writer leaves the clock consistent (`last` is set in one step) and
        // the index at worst missing the batch that was being written.
        self.inner
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The id of the stored event for (agent, request, index), if there is one.
    fn existing(
        &self,
        index: &Index,
        agent_id: &str,
        request_id: &str,
        position: u32,
    ) -> Result<Option<String>, StoreError> {
        let Some(batches) = index.by_request.get(&request_digest(request_id)) else {
            return Ok(None);
        };
        for &key in batches.keys() {
            let Some(value) = self.inner.tree.get(batch_key(key))? else {
                continue;
            };
            let batch = decode_batch(key, &value)?;
            let found = batch.entries.iter().find(|entry| {
                entry.index == position
                    && entry.request_id == request_id
                    && entry.agent_id == agent_id
            });
            if let Some(entry) = found {
                return Ok(Some(id_text(entry.id)));
            }
        }
        Ok(None)
    }

    /// Write `batch` for `agent_id` atomically, skipping entries whose (agent, requestId,
    /// index) exists already (also within the batch); new events get their ids here, in
    /// write order. The writes are NOT durable yet: call [`Store::wait_durable`] before
    /// acknowledging them.
    pub fn create_batch(
        &self,
        agent_id: &str,
        batch: &[impl NewEvent],
    ) -> Result<Vec<Written>, StoreError> {
        let mut results = Vec::with_capacity(batch.len());
        let mut encoder = batch::Encoder::default();
        let mut in_batch: HashMap<(&str, u32), u128> = HashMap::new();
        let mut first = None;
        let mut writer = self.lock_writer();
        for entry in batch {
            let (request_id, position) = (entry.request_id(), entry.index());
            let known = match in_batch.get(&(request_id, position)) {
                Some(&id) => Some(id_text(id)),
                None => self.existing(&writer.index, agent_id, request_id, position)?,
            };
            if let Some(event_id) = known {
                results.push(Written {
                    event_id,
                    duplicate: true,
                });
                continue;
            }
            let id = writer.ids.next().as_u128();
            let event_id = id_text(id);
            first.get_or_insert(id);
            encoder.push(&Entry {
                id,
                index: position,
                agent_id,
                request_id,
                json: &entry.to_json(&event_id),
            });
            in_batch.insert((request_id, position), id);
            results.push(Written {
                event_id,
                duplicate: false,
            });
        }
        if let Some(key) = first {
            let count = encoder.len() as usize;
            self.inner.tree.insert(batch_key(key), encoder.finish())?;
            // Only after the insert: a failed write must not make its requests look known.
            for (request_id, _) in in_batch.keys() {
                writer.index.add(request_digest(request_id), key);
            }
            writer.index.total += count;
        }
        self.inner.written.fetch_add(1, Ordering::SeqCst);
        Ok(results)
    }

    /// Wait until every write that completed before this call is on disk.
    ///
    /// Group commit: callers queue on one lock; the holder flushes everything written so far,
    /// and the callers behind it usually find their writes already covered and return without
    /// a flush of their own.
    pub async fn wait_durable(&self) -> Result<(), StoreError> {
        // Everything written before this point has a generation <= target.
        let target = self.inner.written.fetch_add(1, Ordering::SeqCst) + 1;
        let mut flushed = self.inner.flushed.lock().await;
        if *flushed >= target {
            return Ok(());
        }
        // Writes up to `covering` completed before the flush below starts.
        let covering = self.inner.written.load(Ordering::SeqCst);
        self.flush().await?;
        *flushed = covering;
        Ok(())
    }

    /// The key and value of the batch that would hold event `id`: the last batch whose key is at
    /// or below the id. The caller looks for the id in it.
    fn batch_for(&self, id: u128) -> Result<Option<(u128, sled::IVec)>, StoreError> {
        match self
            .inner
            .tree
            .range(batch_key(0)..=batch_key(id))
            .next_back()
        {
            Some(item) => {
                let (sled_key, value) = item?;
                Ok(Some((key_of(&sled_key)?, value)))
            }
            None => Ok(None),
        }
    }

    /// The event with this id.
    pub fn get(&self, id: &str) -> Result<Option<Value>, StoreError> {
        let Some(uuid) = parse_id(id).map(|uuid| uuid.as_u128()) else {
            return Ok(None);
        };
        // A batch is one sled value, replaced whole by a status change: no lock needed.
        let Some((key, value)) = self.batch_for(uuid)? else {
            return Ok(None);
        };
        match decode_batch(key, &value)?
            .entries
            .iter()
            .find(|e| e.id == uuid)
        {
            Some(entry) => Ok(Some(decode(id, entry.json)?)),
            None => Ok(None),
        }
    }

    /// Change the status of event `id`. Not durable until [`Store::wait_durable`] returns.
    pub fn set_status(&self, id: &str, status: Status) -> Result<StatusChange, StoreError> {
        let Some(uuid) = parse_id(id).map(|uuid| uuid.as_u128()) else {
            return Ok(StatusChange::NotFound);
        };
        // Held until the batch is rewritten, so a concurrent writer's rewrite is not lost.
        let _writer = self.lock_writer();
        let Some((key, value)) = self.batch_for(uuid)? else {
            return Ok(StatusChange::NotFound);
        };
        let batch = decode_batch(key, &value)?;
        let Some(position) = batch.entries.iter().position(|e| e.id == uuid) else {
            return Ok(StatusChange::NotFound);
        };
        let mut event = decode(id, batch.entries[position].json)?;
        let current = event
            .get("status")
            .and_then(Value::as_str)
            .and_then(Status::parse);
        if current == Some(Status::Terminated) && status != Status::Terminated {
            return Ok(StatusChange::Terminated(event));
        }
        if current != Some(status) {
            if let Value::Object(fields) = &mut event {
                fields.insert("status".to_owned(), Value::from(status.as_str()));
            }
            let encoded = serde_json::to_vec(&event).map_err(|error| StoreError::Corrupt {
                id: id.to_owned(),
                reason: error.to_string(),
            })?;
            let value = batch::replace_json(&batch, position, &encoded);
            self.inner.tree.insert(batch_key(key), value)?;
            self.inner.written.fetch_add(1, Ordering::SeqCst);
        }
        Ok(StatusChange::Changed(event))
    }

    /// List events matching `query`, oldest first (newest first with `newest_first`). With a
    /// `request_id` only the batches of that request are read, with a time range only the
    /// batches in it; other filters are applied while scanning. Blocking (sled reads).
    pub fn query(&self, query: &Query) -> Result<Page, StoreError> {
        let mut page = Page {
            total: 0,
            events: Vec::new(),
        };
        // Without a filter on the content, events outside the page are only counted, not
        // decoded, and the total comes from the index, so paging stays cheap.
        let content_filtered = query.status.is_some()
            || query.property.is_some()
            || query.agent_id.is_some()
            || query.integration_ids.is_some();
        let filtered =
            content_filtered || query.created_from_ms.is_some() || query.created_until_ms.is_some();
        let from = query.created_from_ms.map_or(0, first_id_at);
        let until = query.created_until_ms.map_or(u128::MAX, first_id_at);
        let consider = |entry: &Entry<'_>, page: &mut Page| -> Result<(), StoreError> {
            if !(from..until).contains(&entry.id) {
                return Ok(());
            }
            let on_page = page.total >= query.offset && page.events.len() < query.limit;
            if !content_filtered && !on_page {
                page.total += 1;
                return Ok(());
            }
            let event = decode(&id_text(entry.id), entry.json)?;
            if let Some(status) = query.status {
                if event.get("status").and_then(Value::as_str) != Some(status.as_str()) {
                    return Ok(());
                }
            }
            if let Some((name, value)) = &query.property {
                if !event::property_matches(&event, name, value) {
                    return Ok(());
                }
            }
            let field = |name: &str| event.get(name).and_then(Value::as_str);
            let other_agent = query
                .agent_id
                .as_deref()
                .is_some_and(|agent| field("agentId") != Some(agent));
            let other_integration = query.integration_ids.as_ref().is_some_and(|ids| {
                !field("integrationId").is_some_and(|id| ids.iter().any(|i| i == id))
            });
            if other_agent || other_integration {
                return Ok(());
            }
            if on_page {
                page.events.push(event);
            }
            page.total += 1;
            Ok(())
        };
        fn ordered<T>(mut entries: Vec<T>, newest_first: bool) -> Vec<T> {
            if newest_first {
                entries.reverse();
            }
            entries
        }
        if let Some(request_id) = &query.request_id {
            let mut keys = self.lock_writer().index.batches_of(request_id);
            if query.newest_first {
                keys.reverse();
            }
            for key in keys {
                let Some(value) = self.inner.tree.get(batch_key(key))? else {
                    continue;
                };
                for entry in ordered(decode_batch(key, &value)?.entries, query.newest_first) {
                    if entry.request_id == request_id {
                        consider(&entry, &mut page)?;
                    }
                }
            }
            return Ok(page);
        }
        // The batch holding `from` may start before it; batches starting at `until` or later
        // hold nothing earlier.
        let first_batch = match query.created_from_ms {
            Some(_) => self.batch_for(from)?.map_or(from, |(key, _)| key),
            None => 0,
        };
        let batches = self
            .inner
            .tree
            .range(batch_key(first_batch)..batch_key(until));
        let batches: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> =
            if query.newest_first {
                Box::new(batches.rev())
            } else {
                Box::new(batches)
            };
        for item in batches {
            let (sled_key, value) = item?;
            if !filtered {
                if page.events.len() == query.limit {
                    page.total = page.total.max(self.lock_writer().index.total);
                    break;
                }
                let count = batch::count(&value).unwrap_or(0) as usize;
                if page.total + count <= query.offset {
                    page.total += count;
                    continue;
                }
            }
            for entry in ordered(
                decode_batch(key_of(&sled_key)?, &value)?.entries,
                query.newest_first,
            ) {
                consider(&entry, &mut page)?;
            }
        }
        Ok(page)
    }

    /// A tree of its own in the same database (hosted integrations' activity): its writes
    /// become durable with the events' ([`Store::wait_durable`] flushes the whole database).
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree, StoreError> {
        Ok(self.inner.db.open_tree(name)?)
    }

    /// Flush everything written so far.
    ///
    /// On tokio's blocking pool rather than sled's `flush_async`: that one hands the flush to
    /// sled's thread pool, whose every hand-off wakes all its idle threads, and the flush itself
    /// then hands the log write to the pool again. One such wake-up storm per flush is enough.
    /// It then syncs the files (`durable::DiskSync`): sled's flush alone survives a killed
    /// process but not a power cut, and an ack promises the event is kept.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            inner.db.flush()?;
            inner.disk.sync()?;
            Ok::<_, StoreError>(())
        })
        .await
        .map_err(|error| StoreError::Task(error.to_string()))??;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An event with these properties, built by [`event::build`] once the store names its id.
    struct TestEvent {
        request_id: String,
        index: u32,
        trigger: event::Trigger,
    }

    impl NewEvent for TestEvent {
        fn request_id(&self) -> &str {
            &self.request_id
        }

        fn index(&self) -> u32 {
            self.index
        }

        fn to_json(&self, event_id: &str) -> Vec<u8> {
            let origin = event::Origin {
                event_id,
                request_id: &self.request_id,
                agent_id: "agent-01",
                integration_id: "i-1",
                form: None,
                plan: None,
                flood_control: false,
                suppressed: None,
                created: "2024-01-01T00:00:00.000Z",
            };
            event::build(&self.trigger, &origin).expect("valid trigger")
        }
    }

    fn new_event(request_id: &str, index: u32, properties: Value) -> TestEvent {
        let trigger = event::Trigger::from_value(&json!({ "properties": properties }));
        TestEvent {
            request_id: request_id.to_owned(),
            index,
            trigger: trigger.expect("readable"),
        }
    }

    /// Open the store again after the previous handle was dropped. sled's I/O threads may hold
    /// the database (and its file lock) a moment longer after a flush completed, so retry briefly.
    fn reopen(dir: &Path) -> Store {
        reopen_result(dir).unwrap_or_else(|error| panic!("reopen: {error}"))
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn same_key_gives_same_event_even_after_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = {
            let store = Store::open(dir.path()).expect("open");
            let first = store.create_batch("agent-01", &[new_event("r-1", 0, json!({}))]);
            let first = first.expect("write");
            assert!(!first[0].duplicate);
            // A second send in the same batch and in a later batch both answer the same id.
            let again = store
                .create_batch(
                    "agent-01",
                    &[
                        new_event("r-1", 0, json!({})),
                        new_event("r-1", 0, json!({})),
                    ],
                )
                .expect("write");
            assert!(again
                .iter()
                .all(|w| w.duplicate && w.event_id == first[0].event_id));
            runtime().block_on(store.wait_durable()).expect("flush");
            first[0].event_id.clone()
        };
        let store = reopen(dir.path());
        let again = store.create_batch("agent-01", &[new_event("r-1", 0, json!({}))]);
        let again = again.expect("write");
        assert_eq!(
            again[0],
            Written {
                event_id: first.clone(),
                duplicate: true
            }
        );
        // Other index, other agent, other request: new events.
        let others = store
            .create_batch(
                "agent-01",
                &[
                    new_event("r-1", 1, json!({})),
                    new_event("r-2", 0, json!({})),
                ],
            )
            .expect("write");
        assert!(others.iter().all(|w| !w.duplicate && w.event_id != first));
        let other_agent = store.create_batch("agent-02", &[new_event("r-1", 0, json!({}))]);
        assert!(!other_agent.expect("write")[0].duplicate);
        let page = all(&store);
        assert_eq!(page.total, 4);
        assert_eq!(page.events[0]["id"], first.as_str());
    }

    #[test]
    fn request_ids_with_separator_bytes_do_not_collide() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let written = store
            .create_batch(
                "a",
                &[
                    new_event("x\u{0}", 0, json!({})),
                    new_event("x", 0, json!({})),
                ],
            )
            .expect("write");
        assert!(written.iter().all(|w| !w.duplicate));
        let page = store
            .query(&Query {
                request_id: Some("x".into()),
                limit: 10,
                ..Query::default()
            })
            .expect("query");
        assert_eq!(page.total, 1);
        assert_eq!(page.events[0]["requestId"], "x");
    }

    #[test]
    fn time_ranges_and_newest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut ids = Vec::new();
        for batch in 0..4 {
            let events: Vec<_> = (0..3)
                .map(|index| new_event(&format!("r-{batch}"), index, json!({})))
                .collect();
            let written = store.create_batch("agent-01", &events).expect("write");
            ids.extend(written.into_iter().map(|w| w.event_id));
            // Spreads the ids over a few milliseconds; the expectations below are computed
            // from the ids themselves, so they hold however the clock falls.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let millis: Vec<u64> = ids.iter().map(|id| created_ms(id).expect("v7")).collect();
        let listed = |query: Query| -> (usize, Vec<String>) {
            let page = store.query(&query).expect("query");
            let ids = page
                .events
                .iter()
                .map(|e| e["id"].as_str().unwrap().to_owned());
            (page.total, ids.collect())
        };
        let newest: Vec<String> = ids.iter().rev().cloned().collect();
        let all = Query {
            newest_first: true,
            limit: 100,
            ..Query::default()
        };
        assert_eq!(listed(all.clone()), (12, newest.clone()));
        let paged = Query {
            offset: 2,
            limit: 4,
            ..all.clone()
        };
        assert_eq!(listed(paged), (12, newest[2..6].to_vec()));
        let request = Query {
            request_id: Some("r-2".into()),
            ..all.clone()
        };
        assert_eq!(listed(request).1, newest[3..6].to_vec());

        let ranges = [
            (millis[4], millis[9]),
            (millis[0], millis[0] + 1),
            (millis[11], millis[11] + 1),
            (millis[11] + 1, millis[11] + 100),
            (0, millis[5]),
        ];
        for (from, until) in ranges {
            let expected: Vec<String> = ids
                .iter()
                .zip(&millis)
                .filter(|(_, ms)| (from..until).contains(*ms))
                .map(|(id, _)| id.clone())
                .collect();
            let oldest_first = Query {
                created_from_ms: Some(from),
                created_until_ms: Some(until),
                limit: 100,
                ..Query::default()
            };
            assert_eq!(
                listed(oldest_first.clone()),
                (expected.len(), expected.clone())
            );
            let newest_first = Query {
                newest_first: true,
                ..oldest_first
            };
            let reversed: Vec<String> = expected.iter().rev().cloned().collect();
            assert_eq!(listed(newest_first), (expected.len(), reversed));
        }
    }

    #[test]
    fn filters_and_paging() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut batch = Vec::new();
        for index in 0..5 {
            batch.push(new_event(
                "r-a",
                index,
                json!({ "Host#en": format!("h{}", index % 2) }),
            ));
        }
        batch.push(new_event("r-b", 0, json!({ "Host#en": "h0" })));
        let written = store.create_batch("agent-01", &batch).expect("write");

        let by_request = |request: &str, offset, limit| {
            store
                .query(&Query {
                    request_id: Some(request.into()),
                    offset,
                    limit,
                    ..Query::default()
                })
                .expect("query")
        };
        let page = by_request("r-a", 0, 100);
        assert_eq!((page.total, page.events.len()), (5, 5));
        let page = by_request("r-a", 3, 1);
        assert_eq!((page.total, page.events.len()), (5, 1));
        assert_eq!(page.events[0]["id"], written[3].event_id.as_str());
        assert_eq!(by_request("r-c", 0, 100).total, 0);

        let h0 = store
            .query(&Query {
                property: Some(("host".into(), "h0".into())),
                limit: 100,
                ..Query::default()
            })
            .expect("query");
        assert_eq!(h0.total, 4); // indexes 0, 2, 4 of r-a and r-b

        // Status filter follows status changes.
        let changed = store
            .set_status(&written[1].event_id, Status::Suspended)
            .expect("set");
        assert!(matches!(changed, StatusChange::Changed(ref e) if e["status"] == "SUSPENDED"));
        let suspended = store
            .query(&Query {
                status: Some(Status::Suspended),
                limit: 100,
                ..Query::default()
            })
            .expect("query");
        assert_eq!(suspended.total, 1);
        assert_eq!(suspended.events[0]["id"], written[1].event_id.as_str());
        let active = store
            .query(&Query {
                request_id: Some("r-a".into()),
                status: Some(Status::Active),
                limit: 100,
                ..Query::default()
            })
            .expect("query");
        assert_eq!(active.total, 4);
    }

    #[test]
    fn status_changes_persist_and_terminated_is_final() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = {
            let store = Store::open(dir.path()).expect("open");
            let written = store
                .create_batch("a", &[new_event("r", 0, json!({}))])
                .expect("write");
            let id = written[0].event_id.clone();
            assert_eq!(
                store.set_status("nope", Status::Active).expect("set"),
                StatusChange::NotFound
            );
            let terminated = store.set_status(&id, Status::Terminated).expect("set");
            assert!(
                matches!(terminated, StatusChange::Changed(ref e) if e["status"] == "TERMINATED")
            );
            let reopened = store.set_status(&id, Status::Active).expect("set");
            assert!(matches!(reopened, StatusChange::Terminated(_)));
            runtime().block_on(store.wait_durable()).expect("flush");
            id
        };
        let store = reopen(dir.path());
        let event = store.get(&id).expect("get").expect("present");
        assert_eq!(event["status"], "TERMINATED");
        assert_eq!(store.get("missing").expect("get"), None);
    }

    #[test]
    fn wait_durable_serves_concurrent_waiters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        runtime().block_on(async {
            let mut waiters = Vec::new();
            for index in 0..16 {
                let store = store.clone();
                waiters.push(tokio::spawn(async move {
                    store.create_batch("a", &[new_event("r", index, json!({}))])?;
                    store.wait_durable().await
                }));
            }
            for waiter in waiters {
                waiter.await.expect("join").expect("durable");
            }
        });
        assert_eq!(all(&store).total, 16);
    }

    #[test]
    fn ids_are_v7_and_increase_even_after_ids_from_a_clock_that_ran_ahead() {
        // The clock going back never makes an id smaller.
        let future = Uuid::parse_str("7fff0000-0000-7000-8000-000000000000").expect("uuid");
        let mut clock = IdClock::after(future.as_u128());
        let mut previous = future;
        for _ in 0..100 {
            let id = clock.next();
            assert!(id > previous);
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            previous = id;
        }
        let mut clock = IdClock::after(0);
        let now = clock.next();
        assert_eq!(now.get_version_num(), 7);
        assert!(now < future);
        let mut previous = now;
        for _ in 0..10_000 {
            let id = clock.next();
            assert!(id > previous, "{id} after {previous}");
            previous = id;
        }
    }

    #[test]
    fn ids_follow_creation_order_across_reopen_and_are_spelled_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let future = Uuid::parse_str("7fff0000-0000-7000-8000-000000000000").expect("uuid");
        let first = {
            let store = Store::open(dir.path()).expect("open");
            let written = store
                .create_batch(
                    "a",
                    &[new_event("r", 0, json!({})), new_event("r", 1, json!({}))],
                )
                .expect("write");
            let (a, b) = (&written[0].event_id, &written[1].event_id);
            assert!(a < b, "{a} {b}");
            // An event stored "in the future" (the clock went back since): later ids go above.
            let mut encoder = batch::Encoder::default();
            encoder.push(&Entry {
                id: future.as_u128(),
                index: 0,
                agent_id: "a",
                request_id: "future",
                json: b"{\"id\":\"future\"}",
            });
            store
                .inner
                .tree
                .insert(batch_key(future.as_u128()), encoder.finish())
                .expect("insert");
            runtime().block_on(store.wait_durable()).expect("flush");
            written[0].event_id.clone()
        };
        let store = reopen(dir.path());
        let later = store
            .create_batch("a", &[new_event("r", 2, json!({}))])
            .expect("write");
        assert!(later[0].event_id.as_str() > future.to_string().as_str());
        let ids = ids_of(&all(&store));
        assert_eq!(ids.len(), 4);
        assert_eq!(ids[0], first);
        assert_eq!(ids[2], "future");
        assert_eq!(ids[3], later[0].event_id);
        // Only the exact spelling finds an event, as before.
        assert!(store.get(&first).expect("get").is_some());
        assert_eq!(store.get(&first.to_uppercase()).expect("get"), None);
        assert_eq!(store.get(&first.replace('-', "")).expect("get"), None);
        assert_eq!(store.get(&format!("{{{first}}}")).expect("get"), None);
    }

    fn ids_of(page: &Page) -> Vec<String> {
        page.events
            .iter()
            .filter_map(|e| e["id"].as_str().map(str::to_owned))
            .collect()
    }

    fn all(store: &Store) -> Page {
        store
            .query(&Query {
                limit: 10_000,
                ..Query::default()
            })
            .expect("query")
    }

    #[test]
    fn a_time_range_filters_by_the_ids_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let events: Vec<TestEvent> = (0..3).map(|i| new_event("r", i, json!({}))).collect();
        let written = store.create_batch("agent-01", &events).expect("create");
        let minted = (parse_id(&written[0].event_id).expect("id").as_u128() >> 80) as u64;
        let count = |from: Option<u64>, until: Option<u64>| {
            store
                .query(&Query {
                    created_from_ms: from,
                    created_until_ms: until,
                    limit: 100,
                    ..Query::default()
                })
                .expect("query")
                .total
        };
        assert_eq!(count(Some(minted), None), 3, "from is inclusive");
        assert_eq!(count(None, Some(minted)), 0, "until is exclusive");
        assert_eq!(count(Some(minted + 60_000), None), 0);
        assert_eq!(count(Some(minted - 1), Some(minted + 60_000)), 3);
    }

    fn by_request(store: &Store, request_id: &str) -> Page {
        store
            .query(&Query {
                request_id: Some(request_id.to_owned()),
                limit: 10_000,
                ..Query::default()
            })
            .expect("query")
    }

    #[test]
    fn a_corrupt_batch_is_reported_not_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = Store::open(dir.path()).expect("open");
            store
                .create_batch("a", &[new_event("r", 0, json!({}))])
                .expect("write");
            let (key, value) = store.inner.tree.first().expect("read").expect("batch");
            store
                .inner
                .tree
                .insert(key, &value[..value.len() - 1])
                .expect("cut");
            runtime().block_on(store.wait_durable()).expect("flush");
        }
        let error = match reopen_result(dir.path()) {
            Err(error) => error.to_string(),
            Ok(_) => panic!("a cut batch must not open"),
        };
        assert!(error.contains("unreadable event (batch"), "{error}");
    }

    /// [`reopen`], for a store that may rightly fail to open.
    fn reopen_result(dir: &Path) -> Result<Store, StoreError> {
        retrying(
            || Store::open(dir),
            |error| matches!(error, StoreError::Sled(_)),
        )
    }

    /// Call `open` until it succeeds, fails for good, or keeps failing with a `transient` error
    /// (sled's lock still held) for 5 s.
    fn retrying<T, E>(
        open: impl Fn() -> Result<T, E>,
        transient: impl Fn(&E) -> bool,
    ) -> Result<T, E> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match open() {
                Err(error) if transient(&error) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                other => return other,
            }
        }
    }

    #[test]
    fn paging_without_filters_skips_whole_batches_and_counts_all() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Store::open(dir.path()).expect("open");
        let mut written = Vec::new();
        for request in 0..10 {
            let batch: Vec<TestEvent> = (0..3)
                .map(|index| new_event(&format!("r-{request}"), index, json!({})))
                .collect();
            written.extend(store.create_batch("a", &batch).expect("write"));
        }
        for offset in [0, 2, 3, 4, 28, 29, 30, 31] {
            let page = store
                .query(&Query {
                    offset,
                    limit: 4,
                    ..Query::default()
                })
                .expect("query");
            assert_eq!(page.total, 30, "offset {offset}");
            let expected: Vec<String> = written
                .iter()
                .skip(offset)
                .take(4)
                .map(|w| w.event_id.clone())
                .collect();
            assert_eq!(ids_of(&page), expected, "offset {offset}");
        }
    }

    mod model {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            /// Events (agent, request, index) in one batch.
            Create(Vec<(u8, u8, u32)>),
            SetStatus(usize, bool),
            Reopen,
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                6 => proptest::collection::vec((0..2u8, 0..5u8, 0..3u32), 1..6).prop_map(Op::Create),
                2 => (any::<usize>(), any::<bool>()).prop_map(|(n, t)| Op::SetStatus(n, t)),
                1 => Just(Op::Reopen),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(24))]
            /// Whatever the mix of new events, resends, status changes and restarts: one event
            /// per (agent, request, index), the first id answered to every resend, every event
            /// found by id and by request in creation order, and statuses kept.
            #[test]
            fn the_store_behaves_like_a_map_of_keys_to_events(
                ops in proptest::collection::vec(op(), 1..30),
            ) {
                let dir = tempfile::tempdir().expect("tempdir");
                let mut store = Store::open(dir.path()).expect("open");
                // (agent, request, index) → (event id, status), in creation order.
                let mut model: Vec<((u8, u8, u32), String, &str)> = Vec::new();
                for op in ops {
                    match op {
                        Op::Create(events) => {
                            for agent in 0..2u8 {
                                let batch: Vec<TestEvent> = events
                                    .iter()
                                    .filter(|(a, _, _)| *a == agent)
                                    .map(|&(_, r, i)| new_event(&format!("r-{r}"), i, json!({})))
                                    .collect();
                                let keys: Vec<(u8, u8, u32)> =
                                    events.iter().copied().filter(|(a, _, _)| *a == agent).collect();
                                if batch.is_empty() {
                                    continue;
                                }
                                let written = store
                                    .create_batch(&format!("agent-{agent}"), &batch)
                                    .expect("write");
                                for (key, written) in keys.into_iter().zip(written) {
                                    match model.iter().find(|(k, _, _)| *k == key) {
                                        Some((_, id, _)) => {
                                            prop_assert!(written.duplicate);
                                            prop_assert_eq!(&written.event_id, id);
                                        }
                                        None => {
                                            prop_assert!(!written.duplicate);
                                            model.push((key, written.event_id, "ACTIVE"));
                                        }
                                    }
                                }
                            }
                        }
                        Op::SetStatus(n, terminate) if !model.is_empty() => {
                            let slot = n % model.len();
                            let status = if terminate { Status::Terminated } else { Status::Suspended };
                            let change = store.set_status(&model[slot].1, status).expect("set");
                            if model[slot].2 == "TERMINATED" && !terminate {
                                prop_assert!(matches!(change, StatusChange::Terminated(_)));
                            } else {
                                prop_assert!(matches!(change, StatusChange::Changed(_)));
                                model[slot].2 = status.as_str();
                            }
                        }
                        Op::SetStatus(..) => {}
                        Op::Reopen => {
                            runtime().block_on(store.wait_durable()).expect("flush");
                            drop(store);
                            store = reopen(dir.path());
                        }
                    }
                }
                let listed = all(&store);
                prop_assert_eq!(listed.total, model.len());
                let model_ids: Vec<String> = model.iter().map(|(_, id, _)| id.clone()).collect();
                prop_assert_eq!(ids_of(&listed), model_ids);
                for ((_, request, _), id, status) in &model {
                    let event = store.get(id).expect("get").expect("found");
                    prop_assert_eq!(event["status"].as_str(), Some(*status));
                    let listed = by_request(&store, &format!("r-{request}"));
                    let expected: Vec<String> = model
                        .iter()
                        .filter(|((_, r, _), _, _)| r == request)
                        .map(|(_, id, _)| id.clone())
                        .collect();
                    prop_assert_eq!(ids_of(&listed), expected);
                }
            }
        }
    }
}
