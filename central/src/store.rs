//! The central's event store (sled): events, the idempotency index and the secondary indexes
//! REST queries need, plus a group commit so one flush makes many writes durable.
//!
//! Everything lives in one sled tree, `events`, under key prefixes (caller text inside keys is
//! length-prefixed, so no byte inside a request id can make two keys collide):
//! - `o` ‖ event id (16 bytes) → event JSON. Event ids are time-ordered UUIDs (version 7) that
//!   the store hands out in increasing order under its writer lock (never below the last stored
//!   one, whatever the clock does), so a scan of `o` lists events oldest first, new events never
//!   shift earlier pages, and the id alone finds the event.
//! - `r` ‖ len(requestId) ‖ requestId ‖ len(agent) ‖ agent ‖ index (u32 BE) → event id (16
//!   bytes). One key serves both the idempotency check (an exact get on the agent's triple) and
//!   the `requestId` filter (a prefix scan), so each event costs two inserts.
//!
//! Why ids are time-ordered: sled's cost is per key written, and most of all per key written at
//! a random place in the tree. The earlier layout (random v4 ids, `o` ‖ sequence → JSON, `e` ‖ id
//! → sequence, `r` → sequence ‖ id text) paid a third, randomly placed insert per event for the
//! id lookup; dropping it roughly halved `create_batch` (40–45 µs → 21–28 µs per 1.3 KB event
//! on the 2-core machine, `ws::tests::ingest_costs`).
//! Stores written with that layout are still read: an id without an `o` entry is looked up under
//! `e`, `r` values are told apart by length, and old `o` keys (sequence, first byte 0) sort
//! before new ones (a v7 id starts with the time), so listing order holds across the change.
//!
//! One tree lets a whole batch of events and all their index entries go in with one atomic
//! `apply_batch`, so a crash never leaves an event without its idempotency key (which would
//! create a second event on resend). That is also much cheaper than a multi-tree sled
//! transaction (measured 2–3x on the 2-core machine). Writers are serialized by a mutex held
//! only for the duplicate lookups, id assignment, JSON writing and the `apply_batch`, never
//! across an `.await`.
//!
//! What this module does NOT do: validate triggers (see [`crate::event`]) or authenticate.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use uuid::Uuid;

use crate::event::{self, Status};

/// Why a store operation failed. Callers map these to "try again later" (503 / retryable).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled reported an I/O or corruption problem.
    #[error("event store: {0}")]
    Sled(#[from] sled::Error),
    /// A stored value could not be decoded; the data directory was altered or is corrupt.
    #[error("event store holds an unreadable event {id}: {reason}")]
    Corrupt {
        /// The event id whose value is bad.
        id: String,
        /// The decoding error.
        reason: String,
    },
    /// A blocking store task could not complete (runtime shutting down).
    #[error("event store task failed: {0}")]
    Task(String),
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
    /// Only events created for this agent request id (uses the `r` index).
    pub request_id: Option<String>,
    /// Only events in this status.
    pub status: Option<Status>,
    /// Only events with this property name (without `#locale`) and value.
    pub property: Option<(String, String)>,
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
    tree: sled::Tree,
    /// Serializes read-check-write sequences (dedupe lookups + batch, status read + write) and
    /// hands out event ids in the order their events are written.
    writer: Mutex<Writer>,
    /// Bumped after every write; a write with generation g is durable once `flushed >= g`.
    written: AtomicU64,
    /// The highest generation a completed flush covers. Holding the lock means "I am flushing",
    /// so concurrent waiters queue behind one flush instead of each starting their own.
    flushed: tokio::sync::Mutex<u64>,
}

/// Hands out version 7 UUIDs (milliseconds since the epoch, then random bits), each greater
/// than the one before and than every id in the store, even if the clock goes back.
/// What the writer lock guards.
struct Writer {
    ids: IdClock,
    /// Digests of every idempotency key in the store. A key whose digest is absent is new, so
    /// the usual case (not a resend) skips the sled lookup, a random read that cost as much as
    /// the writes; a digest that is present is checked in sled (a resend, or a collision).
    known: HashSet<u64>,
}

fn key_digest(key: &[u8]) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

struct IdClock {
    last: u128,
}

impl IdClock {
    fn next(&mut self) -> Uuid {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| {
                u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
            });
        // 80 random bits from the OS generator (a v4 UUID's version and variant bits skipped).
        let random = Uuid::new_v4();
        let random = random.as_bytes();
        let mut bits = [0u8; 10];
        bits[..6].copy_from_slice(&random[..6]);
        bits[6..].copy_from_slice(&random[9..13]);
        let candidate = uuid::Builder::from_unix_timestamp_millis(millis, &bits)
            .into_uuid()
            .as_u128();
        self.last = if candidate > self.last {
            candidate
        } else {
            v7_successor(self.last)
        };
        Uuid::from_u128(self.last)
    }
}

/// The smallest version 7 UUID greater than `id`: count up in the random bits, then the time,
/// keeping the version and variant bits.
fn v7_successor(id: u128) -> u128 {
    const RAND_B: u128 = (1 << 62) - 1;
    const RAND_A: u128 = 0xFFF << 64;
    if id & RAND_B != RAND_B {
        return id + 1;
    }
    let id = id & !RAND_B;
    if id & RAND_A != RAND_A {
        return id + (1 << 64);
    }
    (id & !RAND_A).wrapping_add(1 << 80)
}

/// Layout 1 only: `e` ‖ event id → sequence (see the module docs).
const EVENT: u8 = b'e';
const ORDER: u8 = b'o';
const BY_REQUEST: u8 = b'r';

fn push_text(key: &mut Vec<u8>, text: &str) {
    // Lengths beyond u32 cannot arrive (frames are size-limited); saturate rather than panic.
    let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(text.as_bytes());
}

fn order_key(id: Uuid) -> [u8; 17] {
    let mut key = [ORDER; 17];
    key[1..].copy_from_slice(id.as_bytes());
    key
}

/// Layout 1: `e` ‖ event id.
fn event_key(id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + id.len());
    key.push(EVENT);
    key.extend_from_slice(id.as_bytes());
    key
}

/// Layout 1: `o` ‖ sequence.
fn sequence_order_key(sequence: [u8; 8]) -> [u8; 9] {
    let mut key = [ORDER; 9];
    key[1..].copy_from_slice(&sequence);
    key
}

fn request_prefix(request_id: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(13 + request_id.len());
    key.push(BY_REQUEST);
    push_text(&mut key, request_id);
    key
}

fn request_key(agent_id: &str, request_id: &str, index: u32) -> Vec<u8> {
    let mut key = request_prefix(request_id);
    push_text(&mut key, agent_id);
    key.extend_from_slice(&index.to_be_bytes());
    key
}

/// The `o` key and the event id an `r` value points to: 16 id bytes, or (layout 1) a sequence
/// and the id's text.
fn split_request_value(value: &[u8]) -> Result<(Vec<u8>, String), StoreError> {
    if let Ok(bytes) = <[u8; 16]>::try_from(value) {
        let id = Uuid::from_bytes(bytes);
        return Ok((order_key(id).to_vec(), id.hyphenated().to_string()));
    }
    let corrupt = |reason: &str| StoreError::Corrupt {
        id: "(request index entry)".to_owned(),
        reason: reason.to_owned(),
    };
    let (sequence, id) = value
        .split_first_chunk::<8>()
        .ok_or_else(|| corrupt("too short"))?;
    let id = std::str::from_utf8(id).map_err(|_| corrupt("event id is not UTF-8"))?;
    Ok((sequence_order_key(*sequence).to_vec(), id.to_owned()))
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
    /// Open (or create) the store in `dir`. Blocking: call it from a blocking context or at
    /// start-up.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(64 * 1024 * 1024)
            .open()?;
        let tree = db.open_tree("events")?;
        // New ids continue above the newest stored one (layout 1 keys are shorter and older).
        let last = match tree.scan_prefix([ORDER]).keys().next_back().transpose()? {
            Some(key) => key
                .get(1..)
                .and_then(|id| <[u8; 16]>::try_from(id).ok())
                .map_or(0, u128::from_be_bytes),
            None => 0,
        };
        let mut known = HashSet::new();
        for key in tree.scan_prefix([BY_REQUEST]).keys() {
            known.insert(key_digest(&key?));
        }
        Ok(Self {
            inner: Arc::new(Inner {
                tree,
                db,
                writer: Mutex::new(Writer {
                    ids: IdClock { last },
                    known,
                }),
                written: AtomicU64::new(0),
                flushed: tokio::sync::Mutex::new(0),
            }),
        })
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Writer> {
        // A panic in another writer leaves the clock consistent (`last` is set in one step).
        self.inner
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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
        let tree = &self.inner.tree;
        let mut results = Vec::with_capacity(batch.len());
        let mut writes = sled::Batch::default();
        let mut in_batch: HashMap<Vec<u8>, String> = HashMap::new();
        let mut writer = self.lock_writer();
        let mut new_digests = Vec::new();
        for entry in batch {
            let key = request_key(agent_id, entry.request_id(), entry.index());
            if let Some(event_id) = in_batch.get(&key) {
                results.push(Written {
                    event_id: event_id.clone(),
                    duplicate: true,
                });
                continue;
            }
            let digest = key_digest(&key);
            if writer.known.contains(&digest) {
                if let Some(existing) = tree.get(&key)? {
                    let (_, event_id) = split_request_value(&existing)?;
                    results.push(Written {
                        event_id,
                        duplicate: true,
                    });
                    continue;
                }
            }
            new_digests.push(digest);
            let id = writer.ids.next();
            let event_id = id.hyphenated().to_string();
            writes.insert(&order_key(id)[..], entry.to_json(&event_id));
            writes.insert(key.clone(), &id.as_bytes()[..]);
            in_batch.insert(key, event_id.clone());
            results.push(Written {
                event_id,
                duplicate: false,
            });
        }
        if !in_batch.is_empty() {
            tree.apply_batch(writes)?;
            // Only after the batch is in: a failed batch must not make its keys look known
            // (harmless, but it would cost lookups for nothing).
            writer.known.extend(new_digests);
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

    /// The `o` key and stored JSON of event `id`, in either layout.
    fn locate(&self, id: &str) -> Result<Option<(Vec<u8>, sled::IVec)>, StoreError> {
        let tree = &self.inner.tree;
        if let Some(uuid) = parse_id(id) {
            let key = order_key(uuid);
            if let Some(json) = tree.get(key)? {
                return Ok(Some((key.to_vec(), json)));
            }
        }
        let Some(sequence) = tree.get(event_key(id))? else {
            return Ok(None);
        };
        let sequence = <[u8; 8]>::try_from(sequence.as_ref()).map_err(|_| StoreError::Corrupt {
            id: id.to_owned(),
            reason: "id entry is not an 8-byte sequence".to_owned(),
        })?;
        let key = sequence_order_key(sequence);
        Ok(tree.get(key)?.map(|json| (key.to_vec(), json)))
    }

    /// The event with this id.
    pub fn get(&self, id: &str) -> Result<Option<Value>, StoreError> {
        match self.locate(id)? {
            Some((_, json)) => Ok(Some(decode(id, &json)?)),
            None => Ok(None),
        }
    }

    /// Change the status of event `id`. Not durable until [`Store::wait_durable`] returns.
    pub fn set_status(&self, id: &str, status: Status) -> Result<StatusChange, StoreError> {
        let _writer = self.lock_writer();
        let Some((key, json)) = self.locate(id)? else {
            return Ok(StatusChange::NotFound);
        };
        let mut event = decode(id, &json)?;
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
            self.inner.tree.insert(key, encoded)?;
            self.inner.written.fetch_add(1, Ordering::SeqCst);
        }
        Ok(StatusChange::Changed(event))
    }

    /// List events matching `query`, oldest first (by request: in agent and index order). With a
    /// `request_id` only that request's index range is read; other filters are applied while
    /// scanning. Blocking (sled reads).
    pub fn query(&self, query: &Query) -> Result<Page, StoreError> {
        let mut page = Page {
            total: 0,
            events: Vec::new(),
        };
        // Without a filter on the content, events outside the page are only counted, not
        // decoded, so paging through a large store stays linear.
        let filtered = query.status.is_some() || query.property.is_some();
        let mut consider = |id: &str, json: &[u8]| -> Result<(), StoreError> {
            let on_page = page.total >= query.offset && page.events.len() < query.limit;
            if !filtered && !on_page {
                page.total += 1;
                return Ok(());
            }
            let event = decode(id, json)?;
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
            if on_page {
                page.events.push(event);
            }
            page.total += 1;
            Ok(())
        };
        match &query.request_id {
            Some(request_id) => {
                for entry in self
                    .inner
                    .tree
                    .scan_prefix(request_prefix(request_id))
                    .values()
                {
                    let (key, id) = split_request_value(&entry?)?;
                    // Written in the same batch as the index entry; a miss means the data
                    // directory was edited by hand. Skip rather than fail the whole listing.
                    if let Some(json) = self.inner.tree.get(key)? {
                        consider(&id, &json)?;
                    }
                }
            }
            None => {
                for entry in self.inner.tree.scan_prefix([ORDER]) {
                    consider("(scan)", &entry?.1)?;
                }
            }
        }
        Ok(page)
    }

    /// Flush everything written so far.
    ///
    /// On tokio's blocking pool rather than sled's `flush_async`: that one hands the flush to
    /// sled's thread pool, whose every hand-off wakes all its idle threads, and the flush itself
    /// then hands the log write to the pool again. One such wake-up storm per flush is enough.
    pub async fn flush(&self) -> Result<(), StoreError> {
        let db = self.inner.db.clone();
        tokio::task::spawn_blocking(move || db.flush())
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
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Store::open(dir) {
                Ok(store) => return store,
                Err(error) if std::time::Instant::now() > deadline => panic!("reopen: {error}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
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
        let page = store
            .query(&Query {
                limit: 100,
                ..Query::default()
            })
            .expect("query");
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
        assert_eq!(
            store
                .query(&Query {
                    limit: 100,
                    ..Query::default()
                })
                .expect("q")
                .total,
            16
        );
    }

    #[test]
    fn v7_successor_counts_up_keeping_version_and_variant() {
        let id = Uuid::parse_str("01890000-0000-7000-8000-000000000000")
            .expect("uuid")
            .as_u128();
        let next = Uuid::from_u128(v7_successor(id));
        assert_eq!(next.to_string(), "01890000-0000-7000-8000-000000000001");
        let full_b = Uuid::parse_str("01890000-0000-7abc-bfff-ffffffffffff").expect("uuid");
        assert_eq!(
            Uuid::from_u128(v7_successor(full_b.as_u128())).to_string(),
            "01890000-0000-7abd-8000-000000000000"
        );
        let full_ab = Uuid::parse_str("01890000-0000-7fff-bfff-ffffffffffff").expect("uuid");
        assert_eq!(
            Uuid::from_u128(v7_successor(full_ab.as_u128())).to_string(),
            "01890000-0001-7000-8000-000000000000"
        );
        // The clock going back never makes an id smaller.
        let future = Uuid::parse_str("7fff0000-0000-7000-8000-000000000000").expect("uuid");
        let mut clock = IdClock {
            last: future.as_u128(),
        };
        let mut previous = future;
        for _ in 0..100 {
            let id = clock.next();
            assert!(id > previous);
            assert_eq!(id.get_version_num(), 7);
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
            previous = id;
        }
        let mut clock = IdClock { last: 0 };
        let now = clock.next();
        assert_eq!(now.get_version_num(), 7);
        assert!(now < future);
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
            store
                .inner
                .tree
                .insert(order_key(future), b"{\"id\":\"future\"}".as_slice())
                .expect("insert");
            runtime().block_on(store.wait_durable()).expect("flush");
            written[0].event_id.clone()
        };
        let store = reopen(dir.path());
        let later = store
            .create_batch("a", &[new_event("r", 2, json!({}))])
            .expect("write");
        assert!(later[0].event_id.as_str() > future.to_string().as_str());
        let page = store
            .query(&Query {
                limit: 10,
                ..Query::default()
            })
            .expect("query");
        let ids: Vec<&str> = page
            .events
            .iter()
            .filter_map(|e| e["id"].as_str())
            .collect();
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

    /// Write events the way the previous layout did (`o` ‖ sequence, `e` ‖ id, `r` → sequence ‖
    /// id text), as a store written by an older central holds them.
    fn write_old_layout(tree: &sled::Tree, events: &[(&str, &str, u32, u64)]) {
        for (id, request_id, index, sequence) in events {
            let sequence = sequence.to_be_bytes();
            let json = json!({"id": id, "eventId": id, "status": "ACTIVE", "requestId": request_id,
                "properties": {"old": true}});
            tree.insert(
                sequence_order_key(sequence),
                serde_json::to_vec(&json).expect("json"),
            )
            .expect("o");
            tree.insert(event_key(id), &sequence[..]).expect("e");
            let mut value = sequence.to_vec();
            value.extend_from_slice(id.as_bytes());
            tree.insert(request_key("agent-01", request_id, *index), value)
                .expect("r");
        }
    }

    #[test]
    fn stores_written_with_the_previous_layout_are_still_read() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old_a = "0b9a2c8e-7c3f-4d3a-9e1b-2f4c6d8e0a1b";
        let old_b = "5d1e3f5a-7b9c-4d1e-8f2a-4b6c8d0e2f4a";
        {
            let db = sled::open(dir.path()).expect("sled");
            let tree = db.open_tree("events").expect("tree");
            write_old_layout(&tree, &[(old_a, "req-old", 0, 0), (old_b, "req-old", 1, 1)]);
            db.flush().expect("flush");
        }
        let store = Store::open(dir.path()).expect("open");
        assert_eq!(
            store.get(old_a).expect("get").expect("found")["properties"]["old"],
            true
        );
        // A resend of an old triple answers the old event; new triples get new-layout events.
        let written = store
            .create_batch(
                "agent-01",
                &[
                    new_event("req-old", 1, json!({})),
                    new_event("req-old", 2, json!({})),
                ],
            )
            .expect("write");
        assert_eq!(
            written[0],
            Written {
                event_id: old_b.to_owned(),
                duplicate: true
            }
        );
        assert!(!written[1].duplicate);
        let by_request = store
            .query(&Query {
                request_id: Some("req-old".into()),
                limit: 10,
                ..Query::default()
            })
            .expect("query");
        let ids: Vec<&str> = by_request
            .events
            .iter()
            .filter_map(|e| e["id"].as_str())
            .collect();
        assert_eq!(ids, [old_a, old_b, written[1].event_id.as_str()]);
        let all = store
            .query(&Query {
                limit: 10,
                ..Query::default()
            })
            .expect("query");
        let ids: Vec<&str> = all.events.iter().filter_map(|e| e["id"].as_str()).collect();
        assert_eq!(
            ids,
            [old_a, old_b, written[1].event_id.as_str()],
            "old events list first"
        );
        // Status changes of old events persist where they are.
        assert!(matches!(
            store.set_status(old_a, Status::Suspended).expect("set"),
            StatusChange::Changed(_)
        ));
        runtime().block_on(store.wait_durable()).expect("flush");
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(
            store.get(old_a).expect("get").expect("found")["status"],
            "SUSPENDED"
        );
        assert_eq!(
            store.get(&written[1].event_id).expect("get").expect("new")["id"],
            written[1].event_id.as_str()
        );
    }
}
