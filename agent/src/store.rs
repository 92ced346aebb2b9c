//! The durable store: every accepted request, every event waiting for the central, and the
//! activity stream live here, in one sled database under `data_dir`.
//!
//! Trees and what moves between them:
//!
//! ```text
//! create_event ──▶ outbox (the finished event.create frame) ──(group commit)──▶ 202
//! transform /  ──▶ inbox ──(group commit)──▶ 202;  worker ──▶ ordered writes:
//! run_script       requests=QUEUED|FAILED|COMPLETED, outbox +n, then inbox entry done
//! relay        ──▶ sees only outbox entries a flush covered; ack: requests record (event id,
//!                  DELIVERED when all are acked), outbox entry done; final reject:
//!                  dead_letters +1, requests=FAILED, outbox entry done
//! activity     ──▶ buffered in memory, written to `activity` every second, pruned by count
//! ```
//!
//! The inbox and the outbox are `GroupedLog`s: the entries one group commit covers are one
//! sled value, written by the flusher just before its flush, and a group leaves sled when all
//! its entries are done. Finished records are written in batches too (`store::finished`).
//!
//! Until a request has a record in `requests`, an in-memory index (rebuilt from the inbox and the
//! outbox at open) answers ACCEPTED or QUEUED for it.
//!
//! The store never answers "accepted" for data that is not flushed ([`Store::accept`] and
//! [`Store::accept_event`] return only after the group commit covering their write), and it is
//! bounded: both refuse with [`StoreError::Full`] instead of growing past `max_entries` pending
//! entries or `max_bytes`. Multi-tree updates are ordered writes rather than transactions: sled
//! recovers a prefix of its log, and each order is chosen so a crash between two writes only
//! causes a resend the central dedupes.
//!
//! What it does not do: it does not run scripts, talk to the central, or decide HTTP status codes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use bytes::Bytes;
use integration::action::{Processed, Routing};
use integration::activity::Activity;
use integration::request::InboundRequest;

mod finished;
mod grouped;
mod operations;
mod outbox;
use finished::Finished;
use grouped::GroupedLog;
use operations::LiveBounds;
pub use operations::{QueueEntry, QueueState};
pub use outbox::{Outbox, OutboxEntry};

/// Store bounds and retention, from the `[store]` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Most pending entries (inbox + outbox) before ingress answers 503.
    pub max_entries: u64,
    /// Most pending bytes (inbox + outbox values) before ingress answers 503.
    pub max_bytes: u64,
    /// Activity-stream entries kept per integration (oldest dropped first).
    pub activity_per_integration: u64,
    /// Finished request records kept for `xmagent request`: the newest half of this many are
    /// always kept, up to all of it (see `store::finished`). Each costs about 150 bytes of
    /// memory as well as disk (sled keeps what it stores in memory), so the default keeps the
    /// agent lean; raise it for a longer history.
    pub max_request_records: u64,
    /// sled page cache; small by default because the agent must stay lean.
    pub cache_mib: u64,
    /// Microseconds the flusher may gather writes into one flush while they keep arriving (0 =
    /// flush at once). Each flush costs a disk sync, so under load fewer, larger flushes answer
    /// more clients per sync; a lone write waits only until no other follows (100 µs).
    pub group_commit_wait_us: u64,
    /// Free space (MiB) the store's filesystem must keep. Below it ingress answers 503 and
    /// `/readyz` says not ready, until space returns: sled cannot go on after a write failed
    /// for lack of space, so the agent stops writing before that happens.
    pub min_free_mib: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 1 << 30,
            activity_per_integration: 200,
            max_request_records: 50_000,
            cache_mib: 8,
            group_commit_wait_us: 500,
            min_free_mib: 64,
        }
    }
}

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The configured bound is reached; the caller should retry later (503 + Retry-After).
    #[error("the store is full ({0}); retry later")]
    Full(&'static str),
    /// The write or its flush failed; nothing is kept for this request.
    #[error("storage error: {0}")]
    Io(String),
    /// A stored value could not be decoded (a bug or a corrupted file; never input-derived).
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    /// The store holds less than it acknowledged (see [`durable::Seal`]): the database file
    /// was truncated, damaged or replaced. Opening refuses unless [`Recovery::AcceptLoss`].
    #[error(
        "the store {dir}/db holds {missing_entries} fewer acknowledged entries (written by \
         {missing_flushes} group commits) than its seal {dir}/{SEAL_FILE} records: the \
         database was truncated, damaged or replaced. Start with --accept-store-loss to go on \
         with what is left, or move {dir} aside to start with an empty store"
    )]
    Damaged {
        /// The store directory.
        dir: String,
        /// Entries the seal records beyond what the database holds.
        missing_entries: u64,
        /// Group commits the seal records beyond what the database holds.
        missing_flushes: u64,
    },
}

/// The seal file inside the store directory (see [`durable::Seal`]).
pub const SEAL_FILE: &str = "xmagent.seal";

/// Where the database keeps its copy of the acknowledged mark (default tree).
const MARK_KEY: &[u8] = b"acknowledged-mark";

/// Queue numbers in the seal's refused ranges.
const INBOX_QUEUE: u8 = 0;
const OUTBOX_QUEUE: u8 = 1;

/// How much of the `[store]` bounds an accepted request may fill.
#[derive(Debug, Clone, Copy)]
enum Headroom {
    /// All of it: a create_event request is its one outbox entry already.
    None,
    /// All but a tenth, kept for the events of script requests: a full inbox whose scripts
    /// could not store their events would never drain.
    ForEvents,
}

impl Headroom {
    fn bounds(self, live: &LiveBounds) -> (u64, u64) {
        let (entries, bytes) = (live.max_entries(), live.max_bytes());
        match self {
            Headroom::None => (entries, bytes),
            Headroom::ForEvents => (entries - entries / 10, bytes - bytes / 10),
        }
    }
}

/// About what an outbox value adds to its trigger (request id, integration, form, seq).
const OUTBOX_HEAD_BYTES: u64 = 200;

/// What [`Store::open`] does when the database holds less than its seal records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Refuse to open with [`StoreError::Damaged`] (the default: an operator decides).
    Refuse,
    /// Log the loss, open what is left and reset the seal (`--accept-store-loss`).
    AcceptLoss,
}

impl From<durable::SealError> for StoreError {
    fn from(error: durable::SealError) -> Self {
        StoreError::Io(error.to_string())
    }
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        StoreError::Io(error.to_string())
    }
}

impl From<grouped::ReadError> for StoreError {
    fn from(error: grouped::ReadError) -> Self {
        match error {
            grouped::ReadError::Sled(error) => error.into(),
            grouped::ReadError::Corrupt(reason) => StoreError::Corrupt(reason.into()),
        }
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}

/// Where a request is in its life.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RequestStatus {
    /// Durable in the inbox, not processed yet.
    Accepted,
    /// Processed; its events wait in the outbox for the central's acknowledgement.
    Queued,
    /// Every event was acknowledged by the central.
    Delivered,
    /// Processed successfully and produced no event (e.g. a "run a script" integration).
    Completed,
    /// Processing failed or the central refused an event for good; see `reason`.
    Failed,
}

impl RequestStatus {
    /// Nothing more will happen to the request.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Delivered | Self::Completed | Self::Failed)
    }
}

/// One event a request produced.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EventRef {
    /// Position among the request's events.
    pub index: u32,
    /// Outbox sequence number.
    pub seq: u64,
    /// The central's event id once acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
}

/// The status record behind `xmagent request ID`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RequestRecord {
    /// The request's id.
    pub request_id: String,
    /// The integration that handled it.
    pub integration_id: String,
    /// Current status.
    pub status: RequestStatus,
    /// When it was accepted (RFC 3339).
    pub received_at: String,
    /// Events produced, with the central's ids as they arrive.
    #[serde(default)]
    pub events: Vec<EventRef>,
    /// Why it failed, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An event that will never be delivered, kept for the operator.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// The refused entry, as it was sent.
    pub entry: protocol::EventCreate,
    /// The central's status code.
    pub status: u16,
    /// The central's reason.
    pub message: String,
}

/// A request that is durably in the inbox, handed from ingress (or from the inbox at start-up) to
/// the worker without reading it back from disk.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The inbox key.
    pub key: u64,
    /// The request as stored.
    pub request: InboundRequest,
    /// Its stored size, for the pending-bytes bound.
    pub size: u64,
}

/// The durable store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    inbox: Arc<GroupedLog>,
    outbox: Arc<GroupedLog>,
    requests: sled::Tree,
    /// Finished records; `requests` holds only unfinished ones.
    finished: Finished,
    activity: sled::Tree,
    dead_letters: sled::Tree,
    /// The `[store]` bounds a reload may change (see `store::operations`).
    bounds: LiveBounds,
    pending_entries: AtomicU64,
    pending_bytes: AtomicU64,
    /// sled's `Tree::len` walks the whole tree, so sizes needed per request are counted here.
    outbox_entries: AtomicU64,
    activity_counts: Mutex<HashMap<String, u64>>,
    /// Activity entries not written to sled yet, per integration, oldest first (at most the
    /// retention each; older ones would be pruned right away). See [`Store::persist_activity`].
    activity_buffer: Mutex<HashMap<String, VecDeque<(u64, Activity)>>>,
    tail: Mutex<OutboxTail>,
    /// requestId → where every unfinished request without a status record is (rebuilt from the
    /// inbox and outbox at open), so `request()` answers ACCEPTED/QUEUED without a record on the
    /// durable path.
    unrecorded: Mutex<HashMap<String, Unrecorded>>,
    commit: Arc<GroupCommit>,
    /// Whether the store's filesystem has more than `min_free_mib` free, as last measured by
    /// [`disk_watch`].
    disk_has_room: std::sync::atomic::AtomicBool,
    /// The store directory, for measuring free space.
    dir: std::path::PathBuf,
}

/// One answer from the central: the entry's seq, how it changes the request's record, and the
/// dead letter to keep (for a final refusal).
type Answered<'a> = (u64, Box<dyn Fn(&mut RequestRecord) + 'a>, Option<Vec<u8>>);

/// Where a request without a status record is.
#[derive(Debug, Clone, Copy)]
enum Unrecorded {
    /// In the inbox under this key, waiting for the worker.
    Inbox(u64),
    /// Its single event is in the outbox under this seq (the `create_event` fast path); the
    /// record is written when the central answers.
    Outbox(u64),
}

/// What the store keeps next to an outbox entry's frame: enough to write the request's status
/// record when the central answers, without decoding the (large) frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct OutboxMeta {
    #[serde(rename = "r")]
    request_id: String,
    #[serde(rename = "i")]
    integration_id: String,
    #[serde(rename = "x")]
    index: u32,
    #[serde(rename = "t")]
    received_at: String,
    /// No status record exists yet; the ack (or final reject) writes it.
    #[serde(rename = "a", default)]
    record_at_ack: bool,
}

/// An outbox value waiting for its seq (drawn later under the append lock): the meta line, and
/// the frame's routing and trigger (JSON text, embedded as it is).
struct PendingValue {
    line: String,
    routing: Routing,
    trigger: Box<serde_json::value::RawValue>,
}

impl PendingValue {
    /// Bytes known before the frame is written (for the store's bounds).
    fn len(&self) -> usize {
        self.line.len() + self.trigger.get().len()
    }
}

/// The start of an outbox value: `meta JSON \n`, then (in [`finish_outbox_value`]) the frame.
/// The meta is written by serde_json, which never writes a raw newline, so the first `\n`
/// splits the two.
fn outbox_value_head(
    meta: &OutboxMeta,
    routing: &Routing,
    trigger: &str,
) -> Result<PendingValue, StoreError> {
    let mut line = serde_json::to_string(meta)?;
    line.push('\n');
    Ok(PendingValue {
        line,
        routing: routing.clone(),
        trigger: serde_json::value::RawValue::from_string(trigger.to_owned())?,
    })
}

/// The whole outbox value of `pending` with its `seq`: the frame written through the
/// protocol's [`protocol::frame::EventCreateRaw`].
fn finish_outbox_value(pending: PendingValue, meta: &OutboxMeta, seq: u64) -> String {
    use std::borrow::Cow;
    let frame = protocol::frame::EventCreateRaw {
        kind: protocol::frame::EventCreateTag,
        request_id: Cow::Borrowed(&meta.request_id),
        index: meta.index,
        integration_id: Cow::Borrowed(&meta.integration_id),
        form: pending.routing.form.as_deref().map(Cow::Borrowed),
        plan: pending.routing.plan.as_deref().map(Cow::Borrowed),
        sender: pending.routing.sender.as_deref().map(Cow::Borrowed),
        flood_control: pending.routing.flood_control,
        trigger: &pending.trigger,
        seq,
    };
    let mut value = pending.line;
    value.push_str(&serde_json::to_string(&frame).expect("event.create frames serialize"));
    value
}

/// Split a stored outbox value into its meta and the frame text; a value without the meta line
/// is corrupt.
fn outbox_parts(value: &[u8]) -> Result<(OutboxMeta, &str), StoreError> {
    let split = value
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| StoreError::Corrupt("an outbox entry without its meta line".into()))?;
    let meta = serde_json::from_slice(&value[..split])?;
    let frame =
        std::str::from_utf8(&value[split + 1..]).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((meta, frame))
}

/// Outbox entries in memory, so the relay sends them and the acks resolve them without reading
/// sled back. Frames are bounded by [`TAIL_MAX_BYTES`]: when the relay falls behind (central
/// down or slow), the oldest frames leave and are read from sled. The small metadata an answer
/// needs stays for every entry appended since the store opened until it is answered, so acks
/// never decode a stored group, however far behind the relay is (it is bounded with the pending
/// entries by `max_entries`).
struct OutboxTail {
    /// Every outbox entry with a seq at or above this one has its frame in `frames`.
    covers_from: u64,
    frames: BTreeMap<u64, Bytes>,
    /// Bytes in `frames`.
    bytes: usize,
    metas: HashMap<u64, OutboxMeta>,
}

/// Most frame bytes the outbox tail keeps in memory.
const TAIL_MAX_BYTES: usize = 2 << 20;

impl OutboxTail {
    fn starting_at(seq: u64) -> Self {
        Self {
            covers_from: seq,
            frames: BTreeMap::new(),
            bytes: 0,
            metas: HashMap::new(),
        }
    }

    /// Add the entry just appended under `seq` (the highest so far); called under the outbox's
    /// append lock, so the tail sees every entry in seq order.
    fn push(&mut self, seq: u64, value: &str, meta: OutboxMeta) {
        let frame = value.split_once('\n').map_or(value, |(_, frame)| frame);
        let frame = Bytes::copy_from_slice(frame.as_bytes());
        self.bytes += frame.len();
        self.frames.insert(seq, frame);
        self.metas.insert(seq, meta);
        while self.bytes > TAIL_MAX_BYTES {
            let Some((oldest, frame)) = self.frames.pop_first() else {
                break;
            };
            self.bytes -= frame.len();
            self.covers_from = oldest + 1;
        }
    }

    fn remove(&mut self, seq: u64) {
        self.metas.remove(&seq);
        if let Some(frame) = self.frames.remove(&seq) {
            self.bytes -= frame.len();
        }
    }
}

impl Inner {
    /// Measure free space; logs when room runs out and when it returns.
    fn measure_disk(&self) {
        let min_free_mib = self.bounds.min_free_mib();
        let needed = min_free_mib.saturating_mul(1024 * 1024);
        let room = match durable::available_bytes(&self.dir) {
            Ok(free) => free > needed,
            Err(error) => {
                tracing::warn!(%error, "cannot measure the free space of the store's disk");
                true
            }
        };
        let had = self.disk_has_room.swap(room, Ordering::Relaxed);
        if had && !room {
            tracing::error!(
                dir = %self.dir.display(),
                min_free_mib,
                "the store's disk is almost full: refusing requests (503) until space returns"
            );
        } else if room && !had {
            tracing::info!("the store's disk has room again: accepting requests");
        }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, OutboxTail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Write the buffered activity entries to sled and prune.
    fn persist_activity(&self) -> Result<(), StoreError> {
        let inner = self;
        let drained: Vec<(String, VecDeque<(u64, Activity)>)> = {
            let mut buffer = inner
                .activity_buffer
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            buffer.drain().filter(|(_, q)| !q.is_empty()).collect()
        };
        for (integration_id, entries) in drained {
            let mut writes = Writes::default();
            let added = entries.len() as u64;
            for (key, entry) in entries {
                writes.insert(
                    activity_key(&integration_id, key),
                    serde_json::to_vec(&entry.into_value())?,
                );
            }
            writes.apply(&inner.activity)?;
            self.prune_activity(&integration_id, added)?;
        }
        Ok(())
    }

    /// Drop the oldest activity entries of `integration_id` beyond the retention count after
    /// `added` were written. Pruning waits for a little slack and then removes the excess at once.
    fn prune_activity(&self, integration_id: &str, added: u64) -> Result<(), StoreError> {
        let inner = self;
        let prefix = activity_prefix(integration_id);
        let retention = inner.bounds.activity_per_integration();
        let slack = retention / 8 + 8;
        let mut counts = inner
            .activity_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(integration_id.to_owned()).or_insert_with(|| {
            (inner.activity.scan_prefix(&prefix).count() as u64).saturating_sub(added)
        });
        *count += added;
        if *count <= retention + slack {
            return Ok(());
        }
        let mut writes = Writes::default();
        let excess = *count - retention;
        for key in inner
            .activity
            .scan_prefix(&prefix)
            .keys()
            .take(excess as usize)
        {
            writes.remove(key?.to_vec());
        }
        writes.apply(&inner.activity)?;
        *count = retention;
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(error) = self.persist_activity() {
            tracing::warn!(%error, "cannot write activity entries");
        }
        // Done marks since the last flush, then a last stable flush (a broken store writes
        // nothing more).
        let commit = &self.commit;
        let written = if commit.broken.borrow().is_some() {
            Ok(())
        } else {
            commit
                .write_groups(&mut Vec::new())
                .map_err(StoreError::from)
                .and_then(|_| {
                    let _writing = commit.writing.lock().unwrap_or_else(|p| p.into_inner());
                    self.inbox.compact()?;
                    self.outbox.compact()?;
                    commit.db.flush()?;
                    commit
                        .disk
                        .sync()
                        .map_err(|e| StoreError::Io(e.to_string()))?;
                    Ok(commit.seal.sync()?)
                })
        };
        if let Err(error) = written {
            tracing::warn!(%error, "cannot write the last queue changes");
        }
        self.commit.stopped.store(true, Ordering::SeqCst);
        self.commit.wake.notify_one();
    }
}

/// One flush serves every write that happened before it started.
///
/// Writers bump `written` after their insert and wait until `flushed` reaches their number. The
/// single flusher reads `written` before calling `flush`, so every number it publishes covers
/// inserts that completed before the flush began. A failed flush records the range of writes it
/// covered in `failed`, so exactly those writers report the failure.
struct GroupCommit {
    db: sled::Db,
    /// Makes a flush stable (fsync); sled's flush alone is not.
    disk: durable::DiskSync,
    /// Records what was acknowledged, and the writes a failed flush refused.
    seal: durable::Seal,
    /// The mark the next write extends; only the single writer (under `writing`) changes it.
    mark: Mutex<durable::Mark>,
    /// Set by the first failed write, flush or sync, with its reason. From then on the store
    /// takes nothing: after a failed `fsync` the kernel may have dropped the pages it could not
    /// write, and sled keeps failing after a failed write, so only a restart can go on.
    broken: watch::Sender<Option<String>>,
    inbox: Arc<GroupedLog>,
    outbox: Arc<GroupedLog>,
    /// Held while gathered queue changes are written; see [`GroupCommit::write_groups`].
    writing: Mutex<()>,
    /// Writes someone waits to see flushed (a 202 waits for its request's), counted.
    written: AtomicU64,
    /// Set by writes nobody waits for (answers, completed runs): they ride on the next flush a
    /// waiting write starts, or get one of their own after [`LAZY_FLUSH_DELAY`]. Under load,
    /// flushes then serve the writers that hold a client's answer instead of alternating with
    /// flushes nobody waits for.
    lazy: std::sync::atomic::AtomicBool,
    /// One past the highest seq the relay may read: advanced past the outbox group a successful
    /// flush covered, so the central only ever sees entries that are on disk (a failed write or
    /// flush leaves sled in its sticky error state, so the watermark never passes unflushed
    /// entries).
    outbox_visible: AtomicU64,
    appended: Arc<Notify>,
    wake: Notify,
    flushed: watch::Sender<u64>,
    failed: Mutex<VecDeque<RangeInclusive<u64>>>,
    /// Set when the store is dropped, so the flusher ends (releasing the database).
    stopped: std::sync::atomic::AtomicBool,
    /// See [`StoreConfig::group_commit_wait_us`].
    gather: std::time::Duration,
    /// Flushes done so far; writes per flush tell an operator how well group commit batches.
    flushes: AtomicU64,
    /// Time of each group commit's write and flush (`/metrics`).
    flush_latency: crate::metrics::Histogram,
}

impl GroupCommit {
    /// Wait while writes keep arriving, for at most `gather`: the clients a flush just answered
    /// send their next requests within a moment, and one flush for all of them beats one for
    /// the first few and another for the rest. A lone write waits one [`GATHER_STEP`].
    fn gather_burst(&self, done: u64) {
        let deadline = std::time::Instant::now() + self.gather;
        let mut seen = self.written.load(Ordering::SeqCst) - done;
        while std::time::Instant::now() + GATHER_STEP <= deadline {
            std::thread::sleep(GATHER_STEP);
            let now = self.written.load(Ordering::SeqCst) - done;
            if now == seen {
                return;
            }
            seen = now;
        }
    }

    /// Write what the inbox and outbox gathered since the last flush, and the mark that counts
    /// it; answers one past the highest outbox seq written (if any) and the new mark (if
    /// anything was written). The seq ranges written are added to `refusable` first, so a
    /// failed flush can refuse exactly them. The order matters for a crash: an inbox entry is
    /// marked done only after its events were appended to the outbox, so taking the inbox's
    /// emptied groups before sealing the outbox, and removing them after writing the outbox
    /// group, puts every request's events on disk before its inbox group leaves. The mark is
    /// written last, so a database that kept it kept everything before it.
    fn write_groups(
        &self,
        refusable: &mut Vec<durable::Voided>,
    ) -> Result<(Option<u64>, Option<durable::Mark>), sled::Error> {
        // One writer at a time (the flusher, or the store's drop): the order above must hold
        // across calls too.
        let _writing = self.writing.lock().unwrap_or_else(|p| p.into_inner());
        let (inbox_group, inbox_emptied) = self.inbox.seal();
        let (outbox_group, outbox_emptied) = self.outbox.seal();
        let appended = outbox_group.as_ref().map(|group| group.last + 1);
        let mut entries = 0;
        for (queue, group) in [(INBOX_QUEUE, &inbox_group), (OUTBOX_QUEUE, &outbox_group)] {
            if let Some(group) = group {
                entries += group.count;
                refusable.push(durable::Voided {
                    queue,
                    first: group.key,
                    last: group.last,
                });
            }
        }
        if let Some(group) = inbox_group {
            self.inbox.write(group)?;
        }
        if let Some(group) = outbox_group {
            self.outbox.write(group)?;
        }
        self.outbox.remove(outbox_emptied)?;
        self.inbox.remove(inbox_emptied)?;
        if entries == 0 {
            return Ok((appended, None));
        }
        let mut mark = self.mark.lock().unwrap_or_else(|p| p.into_inner());
        mark.flushes += 1;
        mark.entries += entries;
        self.db.insert(MARK_KEY, &mark.to_bytes())?;
        Ok((appended, Some(*mark)))
    }

    /// One group commit, on a blocking thread: write, flush, sync, then record the mark. On
    /// any failure the store breaks and the writes this commit covered are recorded as refused
    /// before their writers hear so, so a restart cannot bring them back.
    fn commit(&self) -> Result<Option<u64>, String> {
        if let Some(reason) = self.broken.borrow().clone() {
            return Err(reason);
        }
        let mut refusable = Vec::new();
        let result = self
            .write_groups(&mut refusable)
            .map_err(|e| format!("write: {e}"))
            .and_then(|written| {
                self.db.flush().map_err(|e| format!("flush: {e}"))?;
                self.disk
                    .sync()
                    .map_err(|e| format!("fsync of {}: {e}", self.disk.dir().display()))?;
                Ok(written)
            });
        match result {
            Ok((appended, mark)) => {
                if let Some(mark) = mark {
                    if let Err(error) = self.seal.record(mark) {
                        // The seal only detects losses; the data itself is durable.
                        tracing::warn!(%error, "cannot update the store's seal");
                    }
                }
                Ok(appended)
            }
            Err(reason) => {
                if let Err(error) = self.seal.void(&refusable) {
                    tracing::error!(
                        %error,
                        "cannot record the refused writes; requests answered 503 may be \
                         processed after a restart"
                    );
                }
                self.broken.send_replace(Some(reason.clone()));
                Err(reason)
            }
        }
    }
}

/// How long the flusher watches for more writes before it decides the burst is over.
const GATHER_STEP: std::time::Duration = std::time::Duration::from_micros(100);

/// The longest a write nobody waits for stays unflushed while no waiting write comes along.
const LAZY_FLUSH_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

/// How many failed flush ranges are remembered; writers look theirs up right after the flush.
const FAILED_RANGES_KEPT: usize = 64;

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

/// Writes for one tree, applied one after the other in order.
///
/// Not `sled::Batch`: `apply_batch` makes a batch atomic by taking sled's global write lock,
/// which stalls every other reader and writer (ingress included), and by logging a batch
/// manifest, even for an empty batch. The store never needs that atomicity: its writes are
/// ordered so that whatever prefix of them survives a crash is harmless (see the module docs).
#[derive(Default)]
struct Writes(Vec<(Vec<u8>, Option<Vec<u8>>)>);

impl Writes {
    fn insert(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.0.push((key.into(), Some(value.into())));
    }

    fn remove(&mut self, key: impl Into<Vec<u8>>) {
        self.0.push((key.into(), None));
    }

    fn apply(self, tree: &sled::Tree) -> Result<(), sled::Error> {
        for (key, value) in self.0 {
            match value {
                Some(value) => tree.insert(key, value)?,
                None => tree.remove(key)?,
            };
        }
        Ok(())
    }
}

/// Compare the database's mark with its seal's (see [`durable::Seal`]); answers the refused
/// write ranges to drop, or [`StoreError::Damaged`] when the database lost acknowledged data
/// and `recovery` does not accept that.
fn check_seal(
    dir: &Path,
    mark: durable::Mark,
    sealed: Option<&durable::Sealed>,
    recovery: Recovery,
) -> Result<Vec<durable::Voided>, StoreError> {
    let Some(sealed) = sealed else {
        if mark != durable::Mark::default() {
            tracing::warn!(
                dir = %dir.display(),
                "the store has no seal file ({SEAL_FILE}); a new one starts from what it holds"
            );
        }
        return Ok(Vec::new());
    };
    if sealed.mark.flushes > mark.flushes || sealed.mark.entries > mark.entries {
        let damage = StoreError::Damaged {
            dir: dir.display().to_string(),
            missing_entries: sealed.mark.entries.saturating_sub(mark.entries),
            missing_flushes: sealed.mark.flushes.saturating_sub(mark.flushes),
        };
        match recovery {
            Recovery::Refuse => return Err(damage),
            Recovery::AcceptLoss => {
                tracing::warn!("{damage}; going on with what is left (--accept-store-loss)")
            }
        }
    }
    if !sealed.voided.is_empty() {
        tracing::warn!(
            ranges = sealed.voided.len(),
            "dropping writes a failed flush refused (their clients got 503)"
        );
    }
    Ok(sealed.voided.clone())
}

impl Store {
    /// Open (or create) the store under `dir` and start its flusher task. Must be called inside a
    /// tokio runtime.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        Self::open_with(dir, config, Recovery::Refuse)
    }

    /// [`Store::open`], saying what to do when the database lost acknowledged data.
    pub fn open_with(
        dir: &Path,
        config: StoreConfig,
        recovery: Recovery,
    ) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_mib.max(1) * 1024 * 1024)
            .segment_size(durable::SEGMENT_BYTES)
            .flush_every_ms(None)
            .open()?;
        let disk = durable::DiskSync::open(dir)
            .map_err(|e| StoreError::Io(format!("cannot sync {}: {e}", dir.display())))?;
        let (seal, sealed) = durable::Seal::open(&dir.join(SEAL_FILE))?;
        let mark = match db.get(MARK_KEY)? {
            Some(bytes) => durable::Mark::from_bytes(&bytes)
                .ok_or_else(|| StoreError::Corrupt("the acknowledged mark is unreadable".into()))?,
            None => durable::Mark::default(),
        };
        let refused = check_seal(dir, mark, sealed.as_ref(), recovery)?;
        let tree = |name: &str| db.open_tree(name);
        let (inbox, mut inbox_entries) = GroupedLog::open(tree("inbox")?)?;
        let (outbox, mut outbox_stored) = GroupedLog::open(tree("outbox")?)?;
        for (queue, log, entries) in [
            (INBOX_QUEUE, &inbox, &mut inbox_entries),
            (OUTBOX_QUEUE, &outbox, &mut outbox_stored),
        ] {
            entries.retain(|(seq, _)| {
                let keep = !refused
                    .iter()
                    .any(|r| r.queue == queue && (r.first..=r.last).contains(seq));
                if !keep {
                    log.done(*seq);
                }
                keep
            });
        }
        let (inbox, outbox) = (Arc::new(inbox), Arc::new(outbox));
        let stored = inbox_entries.iter().chain(&outbox_stored);
        let pending_entries = stored.clone().count() as u64;
        let pending_bytes = stored.map(|(_, value)| value.len() as u64).sum();
        let outbox_entries = outbox_stored.len() as u64;
        let mut unrecorded = HashMap::new();
        for (key, value) in &inbox_entries {
            let request: InboundRequest = serde_json::from_slice(value)?;
            unrecorded.insert(request.request_id, Unrecorded::Inbox(*key));
        }
        for (seq, value) in &outbox_stored {
            let (meta, _) = outbox_parts(value)?;
            if meta.record_at_ack {
                unrecorded.insert(meta.request_id, Unrecorded::Outbox(*seq));
            }
        }
        // 0 = none, as sled's first id is 0.
        let appended_end = outbox_stored.last().map_or(0, |(seq, _)| seq + 1);
        let requests = tree("requests")?;
        let finished = Finished::open(&db, config.max_request_records)?;
        let (flushed, _) = watch::channel(0);
        let commit = Arc::new(GroupCommit {
            db: db.clone(),
            disk,
            seal,
            mark: Mutex::new(mark),
            broken: watch::channel(None).0,
            inbox: inbox.clone(),
            outbox: outbox.clone(),
            writing: Mutex::new(()),
            written: AtomicU64::new(0),
            lazy: std::sync::atomic::AtomicBool::new(false),
            outbox_visible: AtomicU64::new(appended_end),
            appended: Arc::new(Notify::new()),
            wake: Notify::new(),
            flushed,
            failed: Mutex::new(VecDeque::new()),
            stopped: std::sync::atomic::AtomicBool::new(false),
            gather: std::time::Duration::from_micros(config.group_commit_wait_us),
            flushes: AtomicU64::new(0),
            flush_latency: Default::default(),
        });
        let inner = Arc::new(Inner {
            requests,
            finished,
            activity: tree("activity")?,
            dead_letters: tree("dead_letters")?,
            inbox,
            outbox,
            db,
            bounds: LiveBounds::new(&config),
            pending_entries: AtomicU64::new(pending_entries),
            pending_bytes: AtomicU64::new(pending_bytes),
            outbox_entries: AtomicU64::new(outbox_entries),
            activity_counts: Mutex::new(HashMap::new()),
            activity_buffer: Mutex::new(HashMap::new()),
            tail: Mutex::new(OutboxTail::starting_at(appended_end)),
            unrecorded: Mutex::new(unrecorded),
            commit: commit.clone(),
            disk_has_room: std::sync::atomic::AtomicBool::new(true),
            dir: dir.to_owned(),
        });
        inner.measure_disk();
        // Refused writes leave the database, durably, before the seal forgets them; the seal
        // then starts from what the database holds.
        commit.commit().map_err(StoreError::Io)?;
        commit
            .seal
            .reset(*commit.mark.lock().unwrap_or_else(|p| p.into_inner()))?;
        tokio::spawn(flusher(commit));
        tokio::spawn(activity_writer(Arc::downgrade(&inner)));
        tokio::spawn(disk_watch(Arc::downgrade(&inner)));
        Ok(Store { inner })
    }

    /// Durably record an accepted request. Returns only after the data is flushed to disk; on a
    /// flush failure the request is removed again and an error returned, so a caller that did not
    /// get `Ok` may safely tell its client "not accepted".
    pub async fn accept(&self, request: InboundRequest) -> Result<Accepted, StoreError> {
        self.check_not_broken()?;
        let inner = &self.inner;
        let value = serde_json::to_vec(&request)?;
        let size = value.len() as u64;
        self.reserve(size, Headroom::ForEvents)?;
        // Only the inbox entry is on the durable path; the status record is written when the
        // worker finishes (until then the in-memory index answers "ACCEPTED").
        let key = match inner
            .inbox
            .append(&inner.db, |_| Ok::<_, sled::Error>(value))
        {
            Ok(key) => key,
            Err(error) => {
                self.release(size);
                return Err(error.into());
            }
        };
        if let Err(error) = self.wait_for_flush().await {
            // Undo the write; the caller answers 503 and the client retries.
            inner.inbox.done(key);
            self.release(size);
            return Err(error);
        }
        self.unrecorded()
            .insert(request.request_id.clone(), Unrecorded::Inbox(key));
        Ok(Accepted { key, request, size })
    }

    /// The `create_event` fast path: durably store the request's one event straight in the outbox
    /// (no inbox entry, no worker) and record its activity entry, which `activity` renders only
    /// when it is written or listed (most entries of a burst never are). Returns the outbox seq
    /// once the group commit covering the write finished; on failure nothing is kept and the
    /// error is returned (503).
    /// The status record is written when the central answers; until then the in-memory index
    /// answers QUEUED. `trigger` is JSON text.
    pub async fn accept_event(
        &self,
        request_id: &str,
        integration_id: &str,
        received_at: &str,
        routing: &Routing,
        trigger: &str,
        activity: impl FnOnce() -> serde_json::Value + Send + 'static,
    ) -> Result<u64, StoreError> {
        self.check_not_broken()?;
        let meta = OutboxMeta {
            request_id: request_id.to_owned(),
            integration_id: integration_id.to_owned(),
            index: 0,
            received_at: received_at.to_owned(),
            record_at_ack: true,
        };
        let seq = self.append_event_durably(&meta, routing, trigger).await?;
        self.record_activity(&meta.integration_id, Activity::deferred(activity));
        Ok(seq)
    }

    /// Append one outbox entry whose status record is written when the central answers
    /// (`meta.record_at_ack`), and wait for the flush that covers it; until the answer the
    /// in-memory index says QUEUED. On failure nothing is kept and the error is returned. Used
    /// by the `create_event` fast path and by a dead letter's retry.
    async fn append_event_durably(
        &self,
        meta: &OutboxMeta,
        routing: &Routing,
        trigger: &str,
    ) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let value = outbox_value_head(meta, routing, trigger)?;
        let head = value.len() as u64;
        self.reserve(head, Headroom::None)?;
        let mut size = head;
        let appended = inner.outbox.append(&inner.db, |seq| {
            let value = self.finish_outbox_entry(seq, value, meta.clone());
            size = value.len() as u64;
            Ok::<_, sled::Error>(value)
        });
        let seq = match appended {
            Ok(seq) => seq,
            Err(error) => {
                self.release(head);
                return Err(error.into());
            }
        };
        inner.pending_bytes.fetch_add(size - head, Ordering::SeqCst);
        inner.outbox_entries.fetch_add(1, Ordering::SeqCst);
        self.unrecorded()
            .insert(meta.request_id.clone(), Unrecorded::Outbox(seq));
        if let Err(error) = self.wait_for_flush().await {
            // Undo; the relay never saw the entry (it only reads what a flush covered).
            self.unrecorded().remove(&meta.request_id);
            inner.tail().remove(seq);
            if inner.outbox.done(seq).is_some() {
                inner.outbox_entries.fetch_sub(1, Ordering::SeqCst);
                self.release(size);
            }
            return Err(error);
        }
        Ok(seq)
    }

    /// Close outbox value `value` with its seq and keep the entry in the tail; runs under the
    /// outbox's append lock, so the tail sees entries in seq order.
    fn finish_outbox_entry(&self, seq: u64, pending: PendingValue, meta: OutboxMeta) -> Vec<u8> {
        let value = finish_outbox_value(pending, &meta, seq);
        self.inner.tail().push(seq, &value, meta);
        value.into_bytes()
    }

    fn unrecorded(&self) -> std::sync::MutexGuard<'_, HashMap<String, Unrecorded>> {
        self.inner
            .unrecorded
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Queue an activity entry; [`activity_writer`] writes it to sled shortly after. Keeping only
    /// the newest `activity_per_integration` entries in the buffer means a burst costs at most
    /// that many sled writes per interval instead of one per request. Activity is diagnostic: a
    /// crash loses at most one interval of it, never a request, event or status.
    fn record_activity(&self, integration_id: &str, entry: Activity) {
        let inner = &self.inner;
        let Ok(key) = inner.db.generate_id() else {
            return;
        };
        let retention = inner.bounds.activity_per_integration() as usize;
        let mut buffer = inner
            .activity_buffer
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let queue = match buffer.get_mut(integration_id) {
            Some(queue) => queue,
            None => buffer.entry(integration_id.to_owned()).or_default(),
        };
        queue.push_back((key, entry));
        while queue.len() > retention {
            queue.pop_front();
        }
    }

    /// Set once a write, flush or sync failed, with the reason: the store then takes nothing
    /// more and the daemon must restart to go on (see [`GroupCommit::broken`]).
    pub fn broken(&self) -> watch::Receiver<Option<String>> {
        self.inner.commit.broken.subscribe()
    }

    fn check_not_broken(&self) -> Result<(), StoreError> {
        match &*self.inner.commit.broken.borrow() {
            Some(reason) => Err(StoreError::Io(format!(
                "the store failed earlier ({reason}); the agent must restart"
            ))),
            None => Ok(()),
        }
    }

    /// Have what was just written flushed soon, without waiting for it (outbox entries become
    /// visible to the relay once it is): within [`LAZY_FLUSH_DELAY`], or sooner with the next
    /// flush a waiting write asks for.
    fn request_flush(&self) {
        let commit = &self.inner.commit;
        commit.lazy.store(true, Ordering::SeqCst);
        commit.wake.notify_one();
    }

    fn reserve(&self, size: u64, headroom: Headroom) -> Result<(), StoreError> {
        let inner = &self.inner;
        if !inner.disk_has_room.load(Ordering::Relaxed) {
            return Err(StoreError::Full(
                "the disk holding the store is almost full",
            ));
        }
        let (max_entries, max_bytes) = headroom.bounds(&inner.bounds);
        if inner.pending_entries.fetch_add(1, Ordering::SeqCst) >= max_entries {
            inner.pending_entries.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Full("pending entry limit reached"));
        }
        if inner.pending_bytes.fetch_add(size, Ordering::SeqCst) + size > max_bytes {
            self.release(size);
            return Err(StoreError::Full("pending byte limit reached"));
        }
        Ok(())
    }

    /// Whether `processed`'s events fit the `[store]` bounds in place of `accepted`'s inbox
    /// entry. Script requests are accepted only below [`Headroom::ForEvents`], so their events
    /// have the rest; when the outbox is empty nothing could free room by waiting, so the
    /// events are let through.
    pub fn has_room_for(&self, accepted: &Accepted, processed: &Processed) -> bool {
        if processed.failure.is_some() || processed.events.len() <= 1 {
            return true;
        }
        let inner = &self.inner;
        if inner.outbox_entries.load(Ordering::SeqCst) == 0 {
            return true;
        }
        let added = processed.events.len() as u64 - 1;
        let entries = inner.pending_entries.load(Ordering::SeqCst) + added;
        if entries > inner.bounds.max_entries() {
            return false;
        }
        let pending = inner
            .pending_bytes
            .load(Ordering::SeqCst)
            .saturating_sub(accepted.size);
        let head_bytes = processed.events.len() as u64 * OUTBOX_HEAD_BYTES;
        // Every event is at most the shared limit: far from the byte bound that settles it,
        // and the events are not written out here only to be written again by `complete`.
        let most = processed.events.len() as u64 * protocol::limits::MAX_TRIGGER_BYTES as u64;
        if pending + head_bytes + most <= inner.bounds.max_bytes() {
            return true;
        }
        let event_bytes: u64 = processed
            .events
            .iter()
            .map(|(_, trigger)| trigger.to_string().len() as u64)
            .sum();
        pending + head_bytes + event_bytes <= inner.bounds.max_bytes()
    }

    fn release(&self, size: u64) {
        self.inner.pending_entries.fetch_sub(1, Ordering::SeqCst);
        self.inner.pending_bytes.fetch_sub(size, Ordering::SeqCst);
    }

    async fn wait_for_flush(&self) -> Result<(), StoreError> {
        let commit = &self.inner.commit;
        let mut flushed = commit.flushed.subscribe();
        let mine = commit.written.fetch_add(1, Ordering::SeqCst) + 1;
        commit.wake.notify_one();
        flushed
            .wait_for(|done| *done >= mine)
            .await
            .map_err(|_| StoreError::Io("the store is shutting down".into()))?;
        let failed = commit.failed.lock().unwrap_or_else(|p| p.into_inner());
        if failed.iter().any(|range| range.contains(&mine)) {
            return Err(StoreError::Io("flush to disk failed".into()));
        }
        Ok(())
    }

    /// Every request still in the inbox, oldest first, for the worker to (re)process at start-up.
    pub fn inbox(&self) -> Result<Vec<Accepted>, StoreError> {
        self.inner
            .inbox
            .entries()?
            .into_iter()
            .map(|(key, value)| {
                Ok(Accepted {
                    key,
                    request: serde_json::from_slice(&value)?,
                    size: value.len() as u64,
                })
            })
            .collect()
    }

    /// Read one inbox entry (None if it was processed meanwhile).
    fn inbox_get(&self, key: u64) -> Result<Option<InboundRequest>, StoreError> {
        match self.inner.inbox.get(key)? {
            Some(value) => Ok(Some(serde_json::from_slice(&value)?)),
            None => Ok(None),
        }
    }

    /// Finish processing inbox entry `key`: write the request record and the activity entry,
    /// append its events to the outbox, then mark it done in the inbox (the order makes a crash
    /// at any point harmless; see the comment inside).
    pub fn complete(
        &self,
        accepted: &Accepted,
        processed: Processed,
    ) -> Result<RequestRecord, StoreError> {
        let inner = &self.inner;
        let (key, request, inbox_size) = (accepted.key, &accepted.request, accepted.size);
        // A request with one event needs no QUEUED record: like the fast path, the in-memory
        // index answers until the central's answer writes the final record. Requests with more
        // events keep a stored record that collects their event ids ack by ack.
        let record_at_ack = processed.failure.is_none() && processed.events.len() == 1;
        let mut heads: Vec<(PendingValue, OutboxMeta)> = Vec::new();
        if processed.failure.is_none() {
            for (index, (routing, trigger)) in processed.events.iter().enumerate() {
                let index =
                    u32::try_from(index).map_err(|_| StoreError::Full("too many events"))?;
                let meta = OutboxMeta {
                    request_id: request.request_id.clone(),
                    integration_id: request.integration_id.clone(),
                    index,
                    received_at: request.received_at.clone(),
                    record_at_ack,
                };
                let trigger = serde_json::to_string(trigger)?;
                heads.push((outbox_value_head(&meta, routing, &trigger)?, meta));
            }
        }
        let status = match (&processed.failure, heads.is_empty()) {
            (Some(_), _) => RequestStatus::Failed,
            (None, true) => RequestStatus::Completed,
            (None, false) => RequestStatus::Queued,
        };
        let mut record = RequestRecord {
            request_id: request.request_id.clone(),
            integration_id: request.integration_id.clone(),
            status,
            received_at: request.received_at.clone(),
            events: Vec::new(),
            reason: processed.failure,
        };
        // No multi-tree transaction: the writes are ordered so that a crash between any two of
        // them is harmless. sled recovers a prefix of its log, and the flusher writes the outbox
        // group holding these events before the removal of the inbox group holding this request.
        // Until that removal is on disk, a restart re-processes the request with the same
        // requestId and indexes, and the central answers the resent events with the events it
        // already created. The status record goes first, under the outbox's append lock, so an
        // ack can never arrive for an event whose request record is not written yet.
        let write_record = |record: &RequestRecord| -> Result<(), StoreError> {
            if status.is_final() {
                inner.finished.insert(&[record])?;
            } else if !record_at_ack {
                inner
                    .requests
                    .insert(request.request_id.as_bytes(), serde_json::to_vec(record)?)?;
            }
            Ok(())
        };
        let mut outbox_bytes = 0u64;
        let appended = heads.len() as u64;
        if heads.is_empty() {
            write_record(&record)?;
        } else {
            inner.outbox.append_many(&inner.db, heads.len(), |seqs| {
                record.events = heads
                    .iter()
                    .zip(seqs)
                    .map(|((_, meta), seq)| EventRef {
                        index: meta.index,
                        seq: *seq,
                        event_id: None,
                    })
                    .collect();
                write_record(&record)?;
                let values: Vec<Vec<u8>> = heads
                    .into_iter()
                    .zip(seqs)
                    .map(|((head, meta), seq)| self.finish_outbox_entry(*seq, head, meta))
                    .collect();
                outbox_bytes = values.iter().map(|v| v.len() as u64).sum();
                Ok::<_, StoreError>(values)
            })?;
        }
        // The index points at the outbox entry before the inbox entry goes, so a status lookup
        // in between still finds the request.
        if let (Some(event), true) = (record.events.first(), record_at_ack) {
            self.unrecorded()
                .insert(request.request_id.clone(), Unrecorded::Outbox(event.seq));
        }
        inner.inbox.done(key);
        if !record_at_ack {
            self.unrecorded().remove(&request.request_id);
        }
        // Pending accounting: the inbox entry became `n` outbox entries.
        inner.pending_bytes.fetch_sub(inbox_size, Ordering::SeqCst);
        inner
            .pending_bytes
            .fetch_add(outbox_bytes, Ordering::SeqCst);
        inner.pending_entries.fetch_sub(1, Ordering::SeqCst);
        inner.pending_entries.fetch_add(appended, Ordering::SeqCst);
        inner.outbox_entries.fetch_add(appended, Ordering::SeqCst);
        // The next flush writes the new events and removes the inbox entry's group once it is
        // empty; nothing waits for it.
        self.request_flush();
        self.record_activity(&request.integration_id, processed.activity);
        Ok(record)
    }

    /// The status record of one request.
    pub fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        // The request can move on between the lookups below (inbox → outbox → record); each
        // move updates the record or the index before the old place goes, so looking again
        // finds it. Two moves at most can happen while one lookup runs.
        for _ in 0..3 {
            if let Some(record) = self.stored_record(request_id)? {
                return Ok(Some(record));
            }
            let place = self.unrecorded().get(request_id).copied();
            match place {
                // The index entry may have gone because the record was written after the look
                // above: the record is written first, so a second look settles it.
                None => return self.stored_record(request_id),
                Some(Unrecorded::Inbox(key)) => {
                    if let Some(request) = self.inbox_get(key)? {
                        return Ok(Some(RequestRecord {
                            request_id: request.request_id,
                            integration_id: request.integration_id,
                            status: RequestStatus::Accepted,
                            received_at: request.received_at,
                            events: Vec::new(),
                            reason: None,
                        }));
                    }
                }
                Some(Unrecorded::Outbox(seq)) => {
                    if let Some(value) = self.inner.outbox.get(seq)? {
                        let (meta, _) = outbox_parts(&value)?;
                        return Ok(Some(Self::queued_record(&meta, seq)));
                    }
                }
            }
        }
        Ok(None)
    }

    /// A request's stored record: unfinished ones first (a crash between moving a record to the
    /// finished generations and removing it from `requests` leaves both; the next answer for the
    /// request completes the move).
    fn stored_record(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        match self.inner.requests.get(request_id.as_bytes())? {
            Some(value) => Ok(Some(serde_json::from_slice(&value)?)),
            None => self.inner.finished.get(request_id),
        }
    }

    /// The record of a fast-path request whose one event waits in the outbox.
    fn queued_record(meta: &OutboxMeta, seq: u64) -> RequestRecord {
        RequestRecord {
            request_id: meta.request_id.clone(),
            integration_id: meta.integration_id.clone(),
            status: RequestStatus::Queued,
            received_at: meta.received_at.clone(),
            events: vec![EventRef {
                index: meta.index,
                seq,
                event_id: None,
            }],
            reason: None,
        }
    }

    /// Activity entries of one integration, newest first, at most `limit` (buffered entries not
    /// written to sled yet included).
    pub fn activity(
        &self,
        integration_id: &str,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        // Pruning leaves a little slack; never show more than the retention.
        let limit = limit.min(self.inner.bounds.activity_per_integration() as usize);
        let mut entries: Vec<serde_json::Value> = {
            let mut buffer = self
                .inner
                .activity_buffer
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            buffer
                .get_mut(integration_id)
                .map(|queue| {
                    queue
                        .iter_mut()
                        .rev()
                        .take(limit)
                        .map(|(_, entry)| entry.render().clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        for value in self
            .inner
            .activity
            .scan_prefix(activity_prefix(integration_id))
            .values()
            .rev()
            .take(limit - entries.len())
        {
            entries.push(serde_json::from_slice(&value?)?);
        }
        Ok(entries)
    }

    /// Dead-lettered events, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner
            .dead_letters
            .iter()
            .values()
            .map(|v| Ok(serde_json::from_slice(&v?)?))
            .collect()
    }

    /// Pending (inbox + outbox) entries and bytes, for metrics and readiness.
    pub fn pending(&self) -> (u64, u64) {
        (
            self.inner.pending_entries.load(Ordering::SeqCst),
            self.inner.pending_bytes.load(Ordering::SeqCst),
        )
    }

    /// Whether the store's disk has more than `[store] min_free_mib` free (last measurement).
    pub fn disk_has_room(&self) -> bool {
        self.inner.disk_has_room.load(Ordering::Relaxed)
    }

    /// Group-commit flushes since the store was opened.
    pub fn flushes(&self) -> u64 {
        self.inner.commit.flushes.load(Ordering::Relaxed)
    }

    /// How long group commits take (write and flush), for `/metrics`.
    pub fn flush_latency(&self) -> &crate::metrics::Histogram {
        &self.inner.commit.flush_latency
    }

    /// Entries waiting for the central.
    pub fn outbox_len(&self) -> u64 {
        self.inner.outbox_entries.load(Ordering::SeqCst)
    }

    /// Write buffered activity and flush everything to disk (shutdown), through the group
    /// commit so buffered outbox entries become visible too.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.persist_activity()?;
        self.wait_for_flush().await
    }

    /// Record the central's answers to outbox entries: update (or, for fast-path requests,
    /// create) their status records and keep dead letters, tree by tree for the whole set of
    /// answers, then mark the entries done (the flusher removes emptied outbox groups later, so
    /// on disk the removal always follows the records).
    fn answer_outbox_entries(&self, answers: Vec<Answered<'_>>) -> Result<(), StoreError> {
        let inner = &self.inner;
        // Request id → (record, whether it is stored in `requests` now).
        let mut records: HashMap<String, (RequestRecord, bool)> = HashMap::new();
        let mut letters = Writes::default();
        let mut answered = Vec::new();
        let mut answered_fast = Vec::new();
        for (seq, update, dead_letter) in answers {
            // Entry metadata comes from the tail when it holds the entry, from sled otherwise.
            // The tail lock is never held while the outbox is read: appends take them in the
            // other order.
            let held = inner.tail().metas.get(&seq).cloned();
            let meta = match held {
                Some(meta) => meta,
                None => match inner.outbox.get(seq)? {
                    Some(value) => outbox_parts(&value)?.0,
                    // Already handled (a duplicate ack after a resend): nothing to do.
                    None => continue,
                },
            };
            if let Some(letter) = dead_letter {
                letters.insert(be(seq), letter);
            }
            let record = match records.remove(&meta.request_id) {
                Some(known) => Some(known),
                // A fast-path request: its record is born now (after a crash between the record
                // write and the outbox removal, a resend's answer rewrites the same record).
                None if meta.record_at_ack => Some((Self::queued_record(&meta, seq), false)),
                None => match inner.requests.get(meta.request_id.as_bytes())? {
                    Some(raw) => Some((serde_json::from_slice::<RequestRecord>(&raw)?, true)),
                    // None: a finished record that was dropped with its generation already.
                    None => inner.finished.get(&meta.request_id)?.map(|r| (r, false)),
                },
            };
            if let Some((mut record, in_requests)) = record {
                update(&mut record);
                records.insert(meta.request_id.clone(), (record, in_requests));
            }
            if meta.record_at_ack {
                answered_fast.push(meta.request_id);
            }
            answered.push(seq);
        }
        let mut unfinished = Writes::default();
        let mut finished = Vec::new();
        for (request_id, (record, in_requests)) in &records {
            if record.status.is_final() {
                finished.push(record);
                if *in_requests {
                    unfinished.remove(request_id.as_bytes());
                }
            } else {
                unfinished.insert(request_id.as_bytes(), serde_json::to_vec(record)?);
            }
        }
        // Ordered writes (see `complete`): dead letters and the requests' new status first; the
        // outbox groups go at a later flush, so a crash in between only causes a harmless resend
        // (after which the answer rewrites the same records).
        letters.apply(&inner.dead_letters)?;
        inner.finished.insert(&finished)?;
        unfinished.apply(&inner.requests)?;
        {
            let mut unrecorded = self.unrecorded();
            for request_id in &answered_fast {
                unrecorded.remove(request_id);
            }
        }
        // Only the relay answers entries, one answer per entry, so the reads above saw exactly
        // what is marked done here.
        let mut removed_bytes = 0u64;
        for seq in &answered {
            removed_bytes += inner.outbox.done(*seq).unwrap_or(0);
        }
        {
            let mut tail = inner.tail();
            for seq in &answered {
                tail.remove(*seq);
            }
        }
        let count = answered.len() as u64;
        inner.outbox_entries.fetch_sub(count, Ordering::SeqCst);
        inner.pending_entries.fetch_sub(count, Ordering::SeqCst);
        inner
            .pending_bytes
            .fetch_sub(removed_bytes, Ordering::SeqCst);
        if count > 0 {
            // Emptied groups leave sled at the next flush.
            self.request_flush();
        }
        Ok(())
    }
}

fn activity_prefix(integration_id: &str) -> Vec<u8> {
    let mut prefix = integration_id.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

/// Oldest first under a prefix scan, so pruning walks forward (cheap in sled) and listing walks
/// backward (rare).
fn activity_key(integration_id: &str, seq: u64) -> Vec<u8> {
    let mut key = activity_prefix(integration_id);
    key.extend_from_slice(&be(seq));
    key
}

impl Outbox for Store {
    fn pending_after(&self, after: Option<u64>, max: usize) -> Result<Vec<OutboxEntry>, String> {
        let visible_end = self.inner.commit.outbox_visible.load(Ordering::SeqCst);
        let from = after.map_or(0, |seq| seq.saturating_add(1));
        if from >= visible_end {
            return Ok(Vec::new());
        }
        {
            let tail = self.inner.tail();
            if from >= tail.covers_from {
                return Ok(tail
                    .frames
                    .range(from..visible_end)
                    .take(max)
                    .map(|(seq, frame)| OutboxEntry {
                        seq: *seq,
                        frame: frame.clone(),
                    })
                    .collect());
            }
        }
        let stored = self.inner.outbox.range(from, visible_end, max);
        stored
            .map_err(|e| StoreError::from(e).to_string())?
            .into_iter()
            .map(|(seq, value)| {
                let (_, frame) = outbox_parts(&value).map_err(|e| e.to_string())?;
                Ok(OutboxEntry {
                    seq,
                    frame: frame.to_owned().into(),
                })
            })
            .collect()
    }

    fn acknowledged(&self, acks: &[(u64, String)]) -> Result<(), String> {
        let answers = acks
            .iter()
            .map(|(seq, event_id)| {
                let seq = *seq;
                let update: Box<dyn Fn(&mut RequestRecord) + '_> = Box::new(move |record| {
                    for event in record.events.iter_mut().filter(|e| e.seq == seq) {
                        event.event_id = Some(event_id.clone());
                    }
                    if record.status == RequestStatus::Queued
                        && record.events.iter().all(|e| e.event_id.is_some())
                    {
                        record.status = RequestStatus::Delivered;
                    }
                });
                (seq, update, None)
            })
            .collect();
        self.answer_outbox_entries(answers)
            .map_err(|e| e.to_string())
    }

    fn rejected(&self, seq: u64, status: u16, message: &str) -> Result<(), String> {
        let held = self.inner.tail().frames.get(&seq).cloned();
        let parsed = match held {
            Some(frame) => serde_json::from_slice(&frame),
            None => {
                let stored = self.inner.outbox.get(seq);
                let Some(value) = stored.map_err(|e| StoreError::from(e).to_string())? else {
                    return Ok(());
                };
                let (_, frame) = outbox_parts(&value).map_err(|e| e.to_string())?;
                serde_json::from_str(frame)
            }
        };
        let entry = match parsed.map_err(|e| e.to_string())? {
            protocol::AgentFrame::EventCreate(entry) => entry,
            _ => return Err("a frame other than event.create in the outbox".into()),
        };
        tracing::warn!(
            seq,
            status,
            request_id = %entry.request_id,
            integration = %entry.integration_id,
            reason = %message,
            "the central refused an event for good; dead-lettered"
        );
        let letter = DeadLetter {
            entry,
            status,
            message: message.to_owned(),
        };
        let letter = serde_json::to_vec(&letter).map_err(|e| e.to_string())?;
        let update: Box<dyn Fn(&mut RequestRecord)> = Box::new(move |record| {
            record.status = RequestStatus::Failed;
            record.reason = Some(format!(
                "the central refused event {seq}: {status} {message}"
            ));
        });
        self.answer_outbox_entries(vec![(seq, update, Some(letter))])
            .map_err(|e| e.to_string())
    }

    fn appended(&self) -> Arc<Notify> {
        self.inner.commit.appended.clone()
    }
}

/// The single flusher: waits for writes, flushes once for all of them, publishes the result.
async fn flusher(commit: Arc<GroupCommit>) {
    loop {
        let done = *commit.flushed.borrow();
        if commit.written.load(Ordering::SeqCst) == done {
            let stopped = commit.stopped.load(Ordering::SeqCst);
            if !commit.lazy.load(Ordering::SeqCst) {
                if stopped {
                    return;
                }
                commit.wake.notified().await;
            } else if stopped
                || tokio::time::timeout(LAZY_FLUSH_DELAY, commit.wake.notified())
                    .await
                    .is_err()
            {
                // No waiting write came along: the lazy writes get a flush of their own.
                commit.written.fetch_add(1, Ordering::SeqCst);
            }
            continue;
        }
        // Everything written so far is sealed by this commit; a lazy write from now on asks
        // again.
        commit.lazy.store(false, Ordering::SeqCst);
        let shared = commit.clone();
        let flushed = tokio::task::spawn_blocking(move || {
            shared.gather_burst(done);
            // Read before the groups are sealed: every write counted here is covered.
            let target = shared.written.load(Ordering::SeqCst);
            shared.flushes.fetch_add(1, Ordering::Relaxed);
            let started = std::time::Instant::now();
            let committed = shared.commit();
            shared.flush_latency.observe(started.elapsed());
            (target, committed)
        })
        .await;
        let (target, flushed) = match flushed {
            Ok(flushed) => flushed,
            // The flush panicked: fail everything written so far, show nothing new to the relay.
            Err(error) => (
                commit.written.load(Ordering::SeqCst),
                Err(error.to_string()),
            ),
        };
        let appended = match flushed {
            Ok(appended) => appended,
            Err(error) => {
                tracing::error!(%error, "store flush failed; the writes it covered are refused");
                let mut failed = commit.failed.lock().unwrap_or_else(|p| p.into_inner());
                if failed.len() == FAILED_RANGES_KEPT {
                    failed.pop_front();
                }
                failed.push_back(done + 1..=target);
                None
            }
        };
        if let Some(appended) =
            appended.filter(|a| *a > commit.outbox_visible.load(Ordering::SeqCst))
        {
            commit.outbox_visible.store(appended, Ordering::SeqCst);
            commit.appended.notify_one();
        }
        commit.flushed.send_replace(target);
    }
}

/// How often the free space of the store's disk is measured.
const DISK_WATCH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

/// Measures free space every [`DISK_WATCH_INTERVAL`] until the store is dropped, so ingress
/// refuses before sled runs out of space and accepts again by itself when space returns.
async fn disk_watch(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(DISK_WATCH_INTERVAL).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        tokio::task::spawn_blocking(move || inner.measure_disk())
            .await
            .ok();
    }
}

/// How often buffered activity entries are written to sled.
const ACTIVITY_WRITE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes buffered activity entries every [`ACTIVITY_WRITE_INTERVAL`] until the store is dropped.
async fn activity_writer(inner: std::sync::Weak<Inner>) {
    loop {
        tokio::time::sleep(ACTIVITY_WRITE_INTERVAL).await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Err(error) = inner.persist_activity() {
            tracing::warn!(%error, "cannot write activity entries");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn inbox_keys(store: &Store) -> Vec<u64> {
        store.inbox().unwrap().iter().map(|a| a.key).collect()
    }

    pub(super) fn request(n: u64) -> InboundRequest {
        InboundRequest {
            request_id: format!("req-{n}"),
            integration_id: "int".into(),
            method: "POST".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            query: String::new(),
            body: format!("{{\"n\":{n}}}"),
            principal: integration::request::PrincipalRecord {
                user: "svc".into(),
                method: "url".into(),
            },
            remote_address: "127.0.0.1".into(),
            received_at: server::http_util::now_rfc3339(),
        }
    }

    fn events(n: usize) -> Processed {
        Processed {
            events: (0..n)
                .map(|i| {
                    let routing = Routing {
                        form: Some("Form".to_owned()),
                        ..Routing::default()
                    };
                    (routing, json!({"properties": {"i": i}}))
                })
                .collect(),
            failure: None,
            activity: json!({"status": "QUEUED"}).into(),
        }
    }

    /// A create_event request `request_id` of integration `int` with default routing.
    async fn accept_plain(store: &Store, request_id: &str, trigger: &str) -> u64 {
        store
            .accept_event(request_id, "int", "", &Routing::default(), trigger, || {
                json!({})
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn accepted_requests_survive_a_reopen_and_flow_to_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let key = {
            let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
            store.accept(request(1)).await.unwrap().key
        };
        // Give the old flusher a moment to notice the drop and release the database.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(inbox_keys(&store), vec![key]);
        assert_eq!(
            store.request("req-1").unwrap().unwrap().status,
            RequestStatus::Accepted
        );
        assert_eq!(store.pending().0, 1);

        let accepted = store.inbox().unwrap().remove(0);
        let record = store.complete(&accepted, events(2)).unwrap();
        assert_eq!(record.status, RequestStatus::Queued);
        // The relay sees outbox entries once a flush covered them.
        store.flush().await.unwrap();
        assert!(inbox_keys(&store).is_empty());
        let pending = store.pending_after(None, 10).unwrap();
        assert_eq!(pending.len(), 2);
        assert!(pending[0].seq < pending[1].seq);
        assert_eq!(
            store.pending_after(Some(pending[0].seq), 10).unwrap(),
            vec![pending[1].clone()]
        );
        assert_eq!(store.pending().0, 2);

        store
            .acknowledged(&[(pending[0].seq, "ev-0".into())])
            .unwrap();
        assert_eq!(
            store.request("req-1").unwrap().unwrap().status,
            RequestStatus::Queued
        );
        store
            .acknowledged(&[(pending[1].seq, "ev-1".into())])
            .unwrap();
        // A duplicate ack after a resend is harmless.
        store
            .acknowledged(&[(pending[1].seq, "ev-1".into())])
            .unwrap();
        let done = store.request("req-1").unwrap().unwrap();
        assert_eq!(done.status, RequestStatus::Delivered);
        assert_eq!(
            done.events
                .iter()
                .map(|e| e.event_id.clone().unwrap())
                .collect::<Vec<_>>(),
            ["ev-0", "ev-1"]
        );
        assert_eq!(store.pending(), (0, 0));
        assert_eq!(
            store.activity("int", 10).unwrap(),
            vec![json!({"status": "QUEUED"})]
        );
    }

    #[tokio::test]
    async fn a_fast_path_event_is_queued_sent_as_its_frame_and_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let trigger = json!({"properties": {"n": 7}});
        let seq = store
            .accept_event(
                &request(7).request_id,
                "int",
                "2024-01-01T00:00:00Z",
                &Routing {
                    form: Some("Form".into()),
                    plan: Some("Plan".into()),
                    sender: Some("svc".into()),
                    flood_control: true,
                },
                &trigger.to_string(),
                move || json!({"n": 7, "id": request(7).request_id}),
            )
            .await
            .unwrap();
        // The relay is woken for the very first entry too (sled's first id is 0).
        tokio::time::timeout(
            std::time::Duration::from_secs(1),
            store.appended().notified(),
        )
        .await
        .expect("the relay is told about the new entry");
        let queued = store.request("req-7").unwrap().unwrap();
        assert_eq!(queued.status, RequestStatus::Queued);
        assert_eq!(queued.events[0].seq, seq);
        let pending = store.pending_after(None, 10).unwrap();
        assert_eq!(pending.len(), 1);
        let frame: protocol::AgentFrame = serde_json::from_slice(&pending[0].frame).unwrap();
        assert_eq!(
            frame,
            protocol::AgentFrame::EventCreate(protocol::EventCreate {
                seq,
                request_id: "req-7".into(),
                index: 0,
                integration_id: "int".into(),
                form: Some("Form".into()),
                plan: Some("Plan".into()),
                sender: Some("svc".into()),
                flood_control: true,
                trigger,
            })
        );
        assert_eq!(
            store.activity("int", 10).unwrap(),
            vec![json!({"n": 7, "id": "req-7"})]
        );
        store.acknowledged(&[(seq, "ev-7".into())]).unwrap();
        let done = store.request("req-7").unwrap().unwrap();
        assert_eq!(done.status, RequestStatus::Delivered);
        assert_eq!(done.events[0].event_id.as_deref(), Some("ev-7"));
        assert_eq!(store.pending(), (0, 0));
        assert_eq!(store.outbox_len(), 0);
    }

    /// A status lookup racing the moves of its request (inbox → record + outbox → delivered)
    /// always finds it: every move writes the new place before the old one goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lookup_racing_its_request_always_finds_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        const REQUESTS: u64 = 300;
        let mut accepted = Vec::new();
        for n in 0..REQUESTS {
            accepted.push(store.accept(request(n)).await.unwrap());
        }
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watcher = {
            let (store, stop) = (store.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut lookups = 0u64;
                loop {
                    for n in 0..REQUESTS {
                        let id = format!("req-{n}");
                        assert!(store.request(&id).unwrap().is_some(), "{id} vanished");
                        lookups += 1;
                    }
                    if stop.load(Ordering::SeqCst) {
                        return lookups;
                    }
                }
            })
        };
        for accepted in &accepted {
            store.complete(accepted, events(1)).unwrap();
        }
        store.flush().await.unwrap();
        for entry in store.pending_after(None, REQUESTS as usize).unwrap() {
            store
                .acknowledged(&[(entry.seq, format!("ev-{}", entry.seq))])
                .unwrap();
        }
        stop.store(true, Ordering::SeqCst);
        assert!(watcher.join().unwrap() > 0);
        for n in 0..REQUESTS {
            let record = store.request(&format!("req-{n}")).unwrap().unwrap();
            assert_eq!(record.status, RequestStatus::Delivered);
        }
    }

    /// A burst of writes shares one gathered flush, and a lone write does not wait for the whole
    /// gathering time (it ends once no other write follows).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_shares_a_flush_and_a_lone_write_does_not_wait() {
        let dir = tempfile::tempdir().unwrap();
        let gather = std::time::Duration::from_secs(10);
        let config = StoreConfig {
            group_commit_wait_us: gather.as_micros() as u64,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), config).unwrap();
        let started = std::time::Instant::now();
        let trigger = json!({"properties": {"lone": true}}).to_string();
        accept_plain(&store, "lone", &trigger).await;
        assert!(
            started.elapsed() < gather / 2,
            "a lone write waited {:?}",
            started.elapsed()
        );
        let before = store.flushes();
        let writers: Vec<_> = (0..16u64)
            .map(|n| {
                let store = store.clone();
                tokio::spawn(async move {
                    let trigger = json!({"properties": {"n": n}}).to_string();
                    accept_plain(&store, &request(n).request_id, &trigger).await
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        // One flush, two if the first write raced ahead of the others.
        let flushes = store.flushes() - before;
        assert!(
            (1..=2).contains(&flushes),
            "{flushes} flushes for 16 writes"
        );
        assert_eq!(store.outbox_len(), 17);
    }

    /// More entries than the in-memory tail holds: the oldest are read back from sled, every
    /// entry is handed out once in seq order with its own frame, and acks resolve either way.
    #[tokio::test]
    async fn entries_beyond_the_in_memory_tail_come_from_sled() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let filler = "x".repeat(16 * 1024);
        let count = TAIL_MAX_BYTES / filler.len() + 40;
        let mut seqs = Vec::new();
        for n in 0..count as u64 {
            let trigger = json!({"properties": {"n": n, "filler": filler}}).to_string();
            let seq = accept_plain(&store, &request(n).request_id, &trigger).await;
            seqs.push(seq);
        }
        assert!(
            store.inner.tail().covers_from > seqs[0],
            "the tail overflowed"
        );
        let mut handed = Vec::new();
        let mut cursor = None;
        loop {
            let batch = store.pending_after(cursor, 7).unwrap();
            let Some(last) = batch.last() else { break };
            cursor = Some(last.seq);
            handed.extend(batch);
        }
        assert_eq!(handed.iter().map(|e| e.seq).collect::<Vec<_>>(), seqs);
        for (n, entry) in handed.iter().enumerate() {
            let frame: protocol::AgentFrame = serde_json::from_slice(&entry.frame).unwrap();
            let protocol::AgentFrame::EventCreate(create) = frame else {
                panic!("not an event.create frame");
            };
            assert_eq!(
                (create.seq, create.trigger["properties"]["n"].as_u64()),
                (entry.seq, Some(n as u64))
            );
        }
        let acks: Vec<(u64, String)> = seqs.iter().map(|seq| (*seq, format!("ev-{seq}"))).collect();
        store.acknowledged(&acks).unwrap();
        assert_eq!(store.pending(), (0, 0));
        assert_eq!(store.inner.tail().bytes, 0);
        assert!(store.inner.tail().metas.is_empty());
        let first = store.request("req-0").unwrap().unwrap();
        assert_eq!(first.status, RequestStatus::Delivered);
        assert_eq!(first.events[0].event_id, Some(format!("ev-{}", seqs[0])));
    }

    #[tokio::test]
    async fn the_bound_refuses_without_losing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            max_entries: 2,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), config).unwrap();
        store.accept(request(1)).await.unwrap();
        store.accept(request(2)).await.unwrap();
        assert!(matches!(
            store.accept(request(3)).await,
            Err(StoreError::Full(_))
        ));
        assert!(
            store.request("req-3").unwrap().is_none(),
            "a refused request must not be half-kept"
        );
        assert_eq!(inbox_keys(&store).len(), 2);

        let config = StoreConfig {
            max_bytes: 10,
            ..StoreConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config).unwrap();
        assert!(matches!(
            store.accept(request(1)).await,
            Err(StoreError::Full(_))
        ));
        assert_eq!(store.pending(), (0, 0));
    }

    #[tokio::test]
    async fn script_events_count_against_the_bound_and_ingress_keeps_them_room() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            max_entries: 10,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), config).unwrap();
        for n in 0..7 {
            let id = request(100 + n).request_id;
            accept_plain(&store, &id, "{}").await;
        }
        let script = store.accept(request(1)).await.unwrap();
        store.accept(request(2)).await.unwrap();
        // 9 pending: a script request would take the tenth, which is kept for events.
        assert!(matches!(
            store.accept(request(3)).await,
            Err(StoreError::Full(_))
        ));
        // One request's inbox entry becomes its events: 3 events need 11 places.
        assert!(store.has_room_for(&script, &events(2)));
        assert!(!store.has_room_for(&script, &events(3)));
        assert!(store.has_room_for(&script, &events(1)));
        // The relay delivers: room appears.
        let acks: Vec<(u64, String)> = store
            .pending_after(None, 10)
            .unwrap()
            .iter()
            .map(|entry| (entry.seq, "ev".to_owned()))
            .collect();
        store.acknowledged(&acks).unwrap();
        assert!(store.has_room_for(&script, &events(3)));
        store.complete(&script, events(3)).unwrap();
        assert_eq!(store.pending().0, 4);
    }

    #[tokio::test]
    async fn a_final_reject_dead_letters_and_fails_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let accepted = store.accept(request(1)).await.unwrap();
        store.complete(&accepted, events(1)).unwrap();
        store.flush().await.unwrap();
        let seq = store.pending_after(None, 1).unwrap()[0].seq;
        store.rejected(seq, 400, "bad priority").unwrap();
        assert!(store.pending_after(None, 10).unwrap().is_empty());
        let letters = store.dead_letters().unwrap();
        assert_eq!(letters.len(), 1);
        assert_eq!(letters[0].message, "bad priority");
        let record = store.request("req-1").unwrap().unwrap();
        assert_eq!(record.status, RequestStatus::Failed);
        assert!(record.reason.unwrap().contains("bad priority"));
    }

    #[tokio::test]
    async fn failed_processing_and_retention_limits() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            activity_per_integration: 3,
            max_request_records: 4,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), config).unwrap();
        for n in 0..6 {
            let accepted = store.accept(request(n)).await.unwrap();
            let processed = Processed {
                events: vec![],
                failure: Some(format!("boom {n}")),
                activity: json!({"n": n}).into(),
            };
            assert_eq!(
                store.complete(&accepted, processed).unwrap().status,
                RequestStatus::Failed
            );
        }
        // Newest first, only the last three kept.
        assert_eq!(
            store.activity("int", 10).unwrap(),
            vec![json!({"n": 5}), json!({"n": 4}), json!({"n": 3})]
        );
        assert!(
            store.request("req-0").unwrap().is_none(),
            "oldest finished record pruned"
        );
        assert_eq!(
            store.request("req-5").unwrap().unwrap().reason.as_deref(),
            Some("boom 5")
        );
        assert_eq!(store.pending(), (0, 0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Accept,
        Process(usize, u8),
        Ack(usize),
        Reject(usize),
        Reopen,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Accept),
            3 => (any::<usize>(), 0u8..3).prop_map(|(i, n)| Op::Process(i, n)),
            3 => any::<usize>().prop_map(Op::Ack),
            1 => any::<usize>().prop_map(Op::Reject),
            1 => Just(Op::Reopen),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Random accept / process / ack / reject / reopen sequences against a model: the outbox
        /// holds exactly the unacknowledged events, in order; statuses and pending counts agree.
        #[test]
        fn store_matches_a_model(ops in proptest::collection::vec(op(), 1..40)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let dir = tempfile::tempdir().unwrap();
                let mut store = Store::open(dir.path(), StoreConfig::default()).unwrap();
                let mut inbox: Vec<(Accepted, String)> = Vec::new();
                let mut outbox: Vec<(u64, String)> = Vec::new();
                let mut status: HashMap<String, RequestStatus> = HashMap::new();
                let mut next = 0u64;
                for op in ops {
                    match op {
                        Op::Accept => {
                            next += 1;
                            let accepted = store.accept(request(next)).await.unwrap();
                            inbox.push((accepted, format!("req-{next}")));
                            status.insert(format!("req-{next}"), RequestStatus::Accepted);
                        }
                        Op::Process(i, n) if !inbox.is_empty() => {
                            let (accepted, id) = inbox.remove(i % inbox.len());
                            let record = store.complete(&accepted, events(n as usize)).unwrap();
                            store.flush().await.unwrap();
                            for event in &record.events {
                                outbox.push((event.seq, id.clone()));
                            }
                            status.insert(id, if n == 0 { RequestStatus::Completed } else { RequestStatus::Queued });
                        }
                        Op::Ack(i) if !outbox.is_empty() => {
                            let (seq, id) = outbox.remove(i % outbox.len());
                            store.acknowledged(&[(seq, format!("ev-{seq}"))]).unwrap();
                            if status[&id] == RequestStatus::Queued && !outbox.iter().any(|(_, other)| *other == id) {
                                status.insert(id, RequestStatus::Delivered);
                            }
                        }
                        Op::Reject(i) if !outbox.is_empty() => {
                            let (seq, id) = outbox.remove(i % outbox.len());
                            store.rejected(seq, 400, "no").unwrap();
                            status.insert(id, RequestStatus::Failed);
                        }
                        Op::Reopen => {
                            drop(store);
                            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                            store = Store::open(dir.path(), StoreConfig::default()).unwrap();
                        }
                        _ => {}
                    }
                    outbox.sort();
                    let seqs: Vec<u64> = store.pending_after(None, 1000).unwrap().iter().map(|e| e.seq).collect();
                    prop_assert_eq!(seqs, outbox.iter().map(|(s, _)| *s).collect::<Vec<_>>());
                    let mut keys: Vec<u64> = inbox.iter().map(|(a, _)| a.key).collect();
                    keys.sort();
                    prop_assert_eq!(inbox_keys(&store), keys);
                    prop_assert_eq!(store.pending().0, (inbox.len() + outbox.len()) as u64);
                    for (id, expected) in &status {
                        prop_assert_eq!(store.request(id).unwrap().unwrap().status, *expected);
                    }
                }
                Ok(())
            })?;
        }
    }
}

#[cfg(test)]
mod throughput {
    use super::*;

    /// Durable accepts per second with 64 concurrent writers (release: `cargo test --release -p
    /// agent --lib store::throughput -- --ignored --nocapture`). A measurement, not an assertion.
    #[tokio::test(flavor = "multi_thread")]
    #[ignore]
    async fn group_commit_accepts_per_second() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            max_entries: u64::MAX,
            max_bytes: u64::MAX,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), config).unwrap();
        let started = std::time::Instant::now();
        let mut tasks = Vec::new();
        for writer in 0..64 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                while started.elapsed() < std::time::Duration::from_secs(3) {
                    let mut request = super::tests::request(writer * 1_000_000 + n);
                    request.body = "x".repeat(1500);
                    store.accept(request).await.unwrap();
                    n += 1;
                }
                n
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        let rate = total as f64 / started.elapsed().as_secs_f64();
        eprintln!(
            "durable accepts: {total} in {:?} = {rate:.0}/s",
            started.elapsed()
        );
    }
}

#[cfg(test)]
mod sled_costs {
    /// Raw sled operation costs on this machine (a measurement, run with --ignored --nocapture).
    #[test]
    #[ignore]
    fn sled_op_costs() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(8 << 20)
            .flush_every_ms(None)
            .open()
            .unwrap();
        let tree = db.open_tree("t").unwrap();
        for size in [64usize, 2048] {
            let value = vec![b'x'; size];
            let n = 20_000u64;
            let t = std::time::Instant::now();
            for i in 0..n {
                tree.insert(i.to_be_bytes(), value.as_slice()).unwrap();
            }
            let insert = t.elapsed() / n as u32;
            let t = std::time::Instant::now();
            for i in 0..n {
                tree.get(i.to_be_bytes()).unwrap();
            }
            let get = t.elapsed() / n as u32;
            let t = std::time::Instant::now();
            for i in 0..n {
                tree.remove(i.to_be_bytes()).unwrap();
            }
            let remove = t.elapsed() / n as u32;
            let t = std::time::Instant::now();
            db.flush().unwrap();
            eprintln!(
                "value {size} B: insert {insert:?}, get {get:?}, remove {remove:?}, flush {:?}",
                t.elapsed()
            );
        }
    }
}
