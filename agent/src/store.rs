//! The durable store: every accepted request, every event waiting for the central, and the
//! activity stream live here, in one sled database under `data_dir`.
//!
//! Trees and what moves between them:
//!
//! ```text
//! accept ──▶ inbox[accept_seq] + requests[request_id]=ACCEPTED ──(group commit)──▶ 202
//! worker ──▶ one transaction: inbox −1, outbox +n (event.create), requests=QUEUED|FAILED|COMPLETED,
//!            activity +1
//! relay  ──▶ ack: outbox −1, requests.events[i].event_id (DELIVERED when all are acked)
//!            reject (final): outbox −1, dead_letter +1, requests=FAILED
//! ```
//!
//! The store never answers "accepted" for data that is not flushed ([`Store::accept`] returns only
//! after the group commit covering its write), and it is bounded: [`Store::accept`] refuses with
//! [`StoreError::Full`] instead of growing past `max_entries` pending entries or `max_bytes`.
//!
//! What it does not do: it does not run scripts, talk to the central, or decide HTTP status codes.

use std::collections::{HashMap, VecDeque};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError, Transactional};
use tokio::sync::{watch, Notify};

use crate::relay::Outbox;

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
    /// Finished request records kept for `xmagent request` (oldest finished dropped first).
    pub max_request_records: u64,
    /// sled page cache; small by default because the agent must stay lean.
    pub cache_mib: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            max_entries: 100_000,
            max_bytes: 1 << 30,
            activity_per_integration: 200,
            max_request_records: 100_000,
            cache_mib: 8,
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
}

impl From<sled::Error> for StoreError {
    fn from(error: sled::Error) -> Self {
        StoreError::Io(error.to_string())
    }
}

impl From<serde_json::Error> for StoreError {
    fn from(error: serde_json::Error) -> Self {
        StoreError::Corrupt(error.to_string())
    }
}

/// Who made a request, as recorded for the activity stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrincipalRecord {
    /// The user the request acts as.
    pub user: String,
    /// How it authenticated: `url`, `basic`, `api_key` or `oauth`.
    pub method: String,
}

/// One accepted inbound request, exactly as the worker needs it after a restart.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct InboundRequest {
    /// The UUID answered in the 202.
    pub request_id: String,
    /// The integration the URL named.
    pub integration_id: String,
    /// HTTP method (always POST today; kept for scripts).
    pub method: String,
    /// Request headers with credentials redacted, in arrival order.
    pub headers: Vec<(String, String)>,
    /// The raw query string without `apiKey`.
    pub query: String,
    /// The body as text (invalid UTF-8 replaced).
    pub body: String,
    /// The authenticated principal.
    pub principal: PrincipalRecord,
    /// The peer address.
    pub remote_address: String,
    /// RFC 3339 UTC time of acceptance.
    pub received_at: String,
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
    /// Internal order key used to prune the oldest finished records.
    #[serde(default)]
    pub order: u64,
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

/// The result of processing one inbound request, written in one transaction.
#[derive(Debug, Clone)]
pub struct Processed {
    /// Event triggers to send, each with the form name (if any).
    pub events: Vec<(Option<String>, serde_json::Value)>,
    /// `Some(reason)` when processing failed (no events are sent then).
    pub failure: Option<String>,
    /// The activity-stream entry for this request (a JSON object).
    pub activity: serde_json::Value,
}

/// The durable store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    db: sled::Db,
    inbox: sled::Tree,
    outbox: sled::Tree,
    requests: sled::Tree,
    request_order: sled::Tree,
    activity: sled::Tree,
    dead_letters: sled::Tree,
    config: StoreConfig,
    pending_entries: AtomicU64,
    pending_bytes: AtomicU64,
    activity_counts: Mutex<HashMap<String, u64>>,
    /// Held while outbox sequence numbers are drawn and committed, so entries become visible in
    /// sequence order: the relay reads "everything after the last seq I sent" and must never see
    /// seq 6 before seq 5 exists.
    outbox_append: Mutex<()>,
    appended: Arc<Notify>,
    commit: Arc<GroupCommit>,
}

impl Drop for Inner {
    fn drop(&mut self) {
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
    written: AtomicU64,
    wake: Notify,
    flushed: watch::Sender<u64>,
    failed: Mutex<VecDeque<RangeInclusive<u64>>>,
    /// Set when the store is dropped, so the flusher ends (releasing the database).
    stopped: std::sync::atomic::AtomicBool,
}

/// How many failed flush ranges are remembered; writers look theirs up right after the flush.
const FAILED_RANGES_KEPT: usize = 64;

fn be(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn key_u64(key: &[u8]) -> Result<u64, StoreError> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("key is not 8 bytes".into()))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Abort a sled transaction with our own error.
fn abort<T>(error: impl Into<StoreError>) -> Result<T, ConflictableTransactionError<StoreError>> {
    Err(ConflictableTransactionError::Abort(error.into()))
}

fn transaction_error(error: TransactionError<StoreError>) -> StoreError {
    match error {
        TransactionError::Abort(error) => error,
        TransactionError::Storage(error) => error.into(),
    }
}

impl Store {
    /// Open (or create) the store under `dir` and start its flusher task. Must be called inside a
    /// tokio runtime.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(config.cache_mib.max(1) * 1024 * 1024)
            .flush_every_ms(None)
            .open()?;
        let tree = |name: &str| db.open_tree(name);
        let (inbox, outbox) = (tree("inbox")?, tree("outbox")?);
        let mut pending_entries = 0;
        let mut pending_bytes = 0;
        for tree in [&inbox, &outbox] {
            for item in tree.iter() {
                let (_, value) = item?;
                pending_entries += 1;
                pending_bytes += value.len() as u64;
            }
        }
        let (flushed, _) = watch::channel(0);
        let commit = Arc::new(GroupCommit {
            db: db.clone(),
            written: AtomicU64::new(0),
            wake: Notify::new(),
            flushed,
            failed: Mutex::new(VecDeque::new()),
            stopped: std::sync::atomic::AtomicBool::new(false),
        });
        let inner = Arc::new(Inner {
            requests: tree("requests")?,
            request_order: tree("request_order")?,
            activity: tree("activity")?,
            dead_letters: tree("dead_letters")?,
            inbox,
            outbox,
            db,
            config,
            pending_entries: AtomicU64::new(pending_entries),
            pending_bytes: AtomicU64::new(pending_bytes),
            activity_counts: Mutex::new(HashMap::new()),
            outbox_append: Mutex::new(()),
            appended: Arc::new(Notify::new()),
            commit: commit.clone(),
        });
        tokio::spawn(flusher(commit));
        Ok(Store { inner })
    }

    /// Durably record an accepted request. Returns only after the data is flushed to disk; on a
    /// flush failure the request is removed again and an error returned, so a caller that did not
    /// get `Ok` may safely tell its client "not accepted". Returns the inbox key for the worker.
    pub async fn accept(&self, request: &InboundRequest) -> Result<u64, StoreError> {
        let inner = &self.inner;
        let value = serde_json::to_vec(request)?;
        let size = value.len() as u64;
        self.reserve(size)?;
        let accept_seq = inner.db.generate_id()?;
        let record = RequestRecord {
            request_id: request.request_id.clone(),
            integration_id: request.integration_id.clone(),
            status: RequestStatus::Accepted,
            received_at: request.received_at.clone(),
            events: Vec::new(),
            reason: None,
            order: accept_seq,
        };
        let written = (|| -> Result<(), StoreError> {
            inner.inbox.insert(be(accept_seq), value)?;
            inner
                .requests
                .insert(request.request_id.as_bytes(), serde_json::to_vec(&record)?)?;
            inner
                .request_order
                .insert(be(accept_seq), request.request_id.as_bytes())?;
            Ok(())
        })();
        let durable = match written {
            Ok(()) => self.wait_for_flush().await,
            Err(error) => Err(error),
        };
        if let Err(error) = durable {
            // Undo what may have been written; the caller answers 503 and the client retries.
            let _ = inner.inbox.remove(be(accept_seq));
            let _ = inner.requests.remove(request.request_id.as_bytes());
            let _ = inner.request_order.remove(be(accept_seq));
            self.release(size);
            return Err(error);
        }
        Ok(accept_seq)
    }

    fn reserve(&self, size: u64) -> Result<(), StoreError> {
        let inner = &self.inner;
        if inner.pending_entries.fetch_add(1, Ordering::SeqCst) >= inner.config.max_entries {
            inner.pending_entries.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Full("pending entry limit reached"));
        }
        if inner.pending_bytes.fetch_add(size, Ordering::SeqCst) + size > inner.config.max_bytes {
            self.release(size);
            return Err(StoreError::Full("pending byte limit reached"));
        }
        Ok(())
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
    pub fn inbox_keys(&self) -> Result<Vec<u64>, StoreError> {
        self.inner
            .inbox
            .iter()
            .keys()
            .map(|key| key_u64(&key?))
            .collect()
    }

    /// Read one inbox entry (None if it was processed meanwhile).
    pub fn inbox_get(&self, key: u64) -> Result<Option<InboundRequest>, StoreError> {
        match self.inner.inbox.get(be(key))? {
            Some(value) => Ok(Some(serde_json::from_slice(&value)?)),
            None => Ok(None),
        }
    }

    /// Finish processing inbox entry `key`: in one transaction remove it from the inbox, append
    /// its events to the outbox, update the request record and write the activity entry.
    pub fn complete(&self, key: u64, processed: Processed) -> Result<RequestRecord, StoreError> {
        let inner = &self.inner;
        let Some(request) = self.inbox_get(key)? else {
            return Err(StoreError::Corrupt(format!("inbox entry {key} vanished")));
        };
        let inbox_size = inner
            .inbox
            .get(be(key))?
            .map(|v| v.len() as u64)
            .unwrap_or(0);
        let append_guard = inner
            .outbox_append
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut entries = Vec::new();
        if processed.failure.is_none() {
            for (index, (form, trigger)) in processed.events.into_iter().enumerate() {
                let index =
                    u32::try_from(index).map_err(|_| StoreError::Full("too many events"))?;
                entries.push(protocol::EventCreate {
                    seq: inner.db.generate_id()?,
                    request_id: request.request_id.clone(),
                    index,
                    integration_id: request.integration_id.clone(),
                    form,
                    trigger,
                });
            }
        }
        let encoded: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|entry| Ok((entry.seq, serde_json::to_vec(entry)?)))
            .collect::<Result<_, StoreError>>()?;
        let outbox_bytes: u64 = encoded.iter().map(|(_, v)| v.len() as u64).sum();
        let status = match (&processed.failure, entries.is_empty()) {
            (Some(_), _) => RequestStatus::Failed,
            (None, true) => RequestStatus::Completed,
            (None, false) => RequestStatus::Queued,
        };
        let record = RequestRecord {
            request_id: request.request_id.clone(),
            integration_id: request.integration_id.clone(),
            status,
            received_at: request.received_at.clone(),
            events: entries
                .iter()
                .map(|e| EventRef {
                    index: e.index,
                    seq: e.seq,
                    event_id: None,
                })
                .collect(),
            reason: processed.failure,
            order: key,
        };
        let record_bytes = serde_json::to_vec(&record)?;
        let activity_seq = inner.db.generate_id()?;
        let activity_key = activity_key(&request.integration_id, activity_seq);
        let activity_bytes = serde_json::to_vec(&processed.activity)?;
        (
            &inner.inbox,
            &inner.outbox,
            &inner.requests,
            &inner.activity,
        )
            .transaction(|(inbox, outbox, requests, activity)| {
                inbox.remove(&be(key))?;
                for (seq, value) in &encoded {
                    outbox.insert(&be(*seq), value.as_slice())?;
                }
                requests.insert(request.request_id.as_bytes(), record_bytes.as_slice())?;
                activity.insert(activity_key.as_slice(), activity_bytes.as_slice())?;
                Ok(())
            })
            .map_err(transaction_error)?;
        drop(append_guard);
        // Pending accounting: the inbox entry became `n` outbox entries.
        inner.pending_bytes.fetch_sub(inbox_size, Ordering::SeqCst);
        inner
            .pending_bytes
            .fetch_add(outbox_bytes, Ordering::SeqCst);
        inner.pending_entries.fetch_sub(1, Ordering::SeqCst);
        inner
            .pending_entries
            .fetch_add(encoded.len() as u64, Ordering::SeqCst);
        if !encoded.is_empty() {
            inner.appended.notify_one();
        }
        self.prune_activity(&request.integration_id)?;
        if record.status.is_final() {
            self.prune_requests()?;
        }
        Ok(record)
    }

    /// The status record of one request.
    pub fn request(&self, request_id: &str) -> Result<Option<RequestRecord>, StoreError> {
        match self.inner.requests.get(request_id.as_bytes())? {
            Some(value) => Ok(Some(serde_json::from_slice(&value)?)),
            None => Ok(None),
        }
    }

    /// Activity entries of one integration, newest first, at most `limit`.
    pub fn activity(
        &self,
        integration_id: &str,
        limit: usize,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        self.inner
            .activity
            .scan_prefix(activity_prefix(integration_id))
            .values()
            .take(limit)
            .map(|value| Ok(serde_json::from_slice(&value?)?))
            .collect()
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

    /// Entries waiting for the central.
    pub fn outbox_len(&self) -> usize {
        self.inner.outbox.len()
    }

    /// Flush everything to disk (shutdown).
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.inner.db.flush_async().await?;
        Ok(())
    }

    fn remove_outbox_entry(
        &self,
        seq: u64,
        update: impl Fn(&mut RequestRecord),
        dead_letter: Option<&[u8]>,
    ) -> Result<(), StoreError> {
        let inner = &self.inner;
        let Some(value) = inner.outbox.get(be(seq))? else {
            // Already handled (a duplicate ack after a resend): nothing to do.
            return Ok(());
        };
        let entry: protocol::EventCreate = serde_json::from_slice(&value)?;
        let size = value.len() as u64;
        let removed = (&inner.outbox, &inner.requests, &inner.dead_letters)
            .transaction(|(outbox, requests, dead_letters)| {
                if outbox.remove(&be(seq))?.is_none() {
                    return Ok(false);
                }
                if let Some(letter) = dead_letter {
                    dead_letters.insert(&be(seq), letter)?;
                }
                if let Some(raw) = requests.get(entry.request_id.as_bytes())? {
                    let mut record: RequestRecord = match serde_json::from_slice(&raw) {
                        Ok(record) => record,
                        Err(error) => return abort(error),
                    };
                    update(&mut record);
                    let raw = match serde_json::to_vec(&record) {
                        Ok(raw) => raw,
                        Err(error) => return abort(error),
                    };
                    requests.insert(entry.request_id.as_bytes(), raw)?;
                }
                Ok(true)
            })
            .map_err(transaction_error)?;
        if removed {
            inner.pending_entries.fetch_sub(1, Ordering::SeqCst);
            inner.pending_bytes.fetch_sub(size, Ordering::SeqCst);
            self.prune_requests()?;
        }
        Ok(())
    }

    /// Drop the oldest activity entries of `integration_id` beyond the retention count.
    fn prune_activity(&self, integration_id: &str) -> Result<(), StoreError> {
        let inner = &self.inner;
        let prefix = activity_prefix(integration_id);
        let mut counts = inner
            .activity_counts
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let count = match counts.get_mut(integration_id) {
            Some(count) => {
                *count += 1;
                count
            }
            None => counts
                .entry(integration_id.to_owned())
                .or_insert(inner.activity.scan_prefix(&prefix).count() as u64),
        };
        while *count > inner.config.activity_per_integration {
            match inner.activity.scan_prefix(&prefix).keys().next_back() {
                Some(oldest) => {
                    inner.activity.remove(oldest?)?;
                    *count -= 1;
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Drop the oldest finished request records beyond the retention count. Unfinished ones are
    /// never dropped (they are bounded by the store bound instead).
    fn prune_requests(&self) -> Result<(), StoreError> {
        let inner = &self.inner;
        let excess =
            (inner.request_order.len() as u64).saturating_sub(inner.config.max_request_records);
        if excess == 0 {
            return Ok(());
        }
        for item in inner.request_order.iter().take(excess as usize) {
            let (order, request_id) = item?;
            let finished = match inner.requests.get(&request_id)? {
                Some(raw) => serde_json::from_slice::<RequestRecord>(&raw)?
                    .status
                    .is_final(),
                None => true,
            };
            if !finished {
                break;
            }
            inner.requests.remove(&request_id)?;
            inner.request_order.remove(order)?;
        }
        Ok(())
    }
}

fn activity_prefix(integration_id: &str) -> Vec<u8> {
    let mut prefix = integration_id.as_bytes().to_vec();
    prefix.push(0);
    prefix
}

/// Newest first under a prefix scan: the sequence is stored inverted.
fn activity_key(integration_id: &str, seq: u64) -> Vec<u8> {
    let mut key = activity_prefix(integration_id);
    key.extend_from_slice(&be(u64::MAX - seq));
    key
}

impl Outbox for Store {
    fn pending_after(
        &self,
        after: Option<u64>,
        max: usize,
    ) -> Result<Vec<protocol::EventCreate>, String> {
        let range = match after {
            Some(seq) => self.inner.outbox.range(be(seq.saturating_add(1))..),
            None => self.inner.outbox.iter(),
        };
        range
            .values()
            .take(max)
            .map(|value| {
                let value = value.map_err(|e| e.to_string())?;
                serde_json::from_slice(&value).map_err(|e| e.to_string())
            })
            .collect()
    }

    fn acknowledged(&self, seq: u64, event_id: &str) -> Result<(), String> {
        self.remove_outbox_entry(
            seq,
            |record| {
                for event in record.events.iter_mut().filter(|e| e.seq == seq) {
                    event.event_id = Some(event_id.to_owned());
                }
                if record.status == RequestStatus::Queued
                    && record.events.iter().all(|e| e.event_id.is_some())
                {
                    record.status = RequestStatus::Delivered;
                }
            },
            None,
        )
        .map_err(|e| e.to_string())
    }

    fn rejected(&self, seq: u64, status: u16, message: &str) -> Result<(), String> {
        let Some(value) = self.inner.outbox.get(be(seq)).map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let entry: protocol::EventCreate =
            serde_json::from_slice(&value).map_err(|e| e.to_string())?;
        let letter = DeadLetter {
            entry,
            status,
            message: message.to_owned(),
        };
        let letter = serde_json::to_vec(&letter).map_err(|e| e.to_string())?;
        self.remove_outbox_entry(
            seq,
            |record| {
                record.status = RequestStatus::Failed;
                record.reason = Some(format!(
                    "the central refused event {seq}: {status} {message}"
                ));
            },
            Some(&letter),
        )
        .map_err(|e| e.to_string())
    }

    fn appended(&self) -> Arc<Notify> {
        self.inner.appended.clone()
    }
}

/// The single flusher: waits for writes, flushes once for all of them, publishes the result.
async fn flusher(commit: Arc<GroupCommit>) {
    loop {
        let target = commit.written.load(Ordering::SeqCst);
        let done = *commit.flushed.borrow();
        if target == done {
            if commit.stopped.load(Ordering::SeqCst) {
                return;
            }
            commit.wake.notified().await;
            continue;
        }
        let db = commit.db.clone();
        let failure = match tokio::task::spawn_blocking(move || db.flush()).await {
            Ok(Ok(_)) => None,
            Ok(Err(error)) => Some(error.to_string()),
            Err(error) => Some(error.to_string()),
        };
        if let Some(error) = failure {
            tracing::error!(%error, "store flush failed; the writes it covered are refused");
            let mut failed = commit.failed.lock().unwrap_or_else(|p| p.into_inner());
            if failed.len() == FAILED_RANGES_KEPT {
                failed.pop_front();
            }
            failed.push_back(done + 1..=target);
        }
        commit.flushed.send_replace(target);
    }
}

/// RFC 3339 timestamp of now, shared by ingress and the worker so records agree on the format.
pub fn timestamp() -> String {
    now_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn request(n: u64) -> InboundRequest {
        InboundRequest {
            request_id: format!("req-{n}"),
            integration_id: "int".into(),
            method: "POST".into(),
            headers: vec![("content-type".into(), "application/json".into())],
            query: String::new(),
            body: format!("{{\"n\":{n}}}"),
            principal: PrincipalRecord {
                user: "svc".into(),
                method: "url".into(),
            },
            remote_address: "127.0.0.1".into(),
            received_at: timestamp(),
        }
    }

    fn events(n: usize) -> Processed {
        Processed {
            events: (0..n)
                .map(|i| (Some("Form".to_owned()), json!({"properties": {"i": i}})))
                .collect(),
            failure: None,
            activity: json!({"status": "QUEUED"}),
        }
    }

    #[tokio::test]
    async fn accepted_requests_survive_a_reopen_and_flow_to_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let key = {
            let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
            store.accept(&request(1)).await.unwrap()
        };
        // Give the old flusher a moment to notice the drop and release the database.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        assert_eq!(store.inbox_keys().unwrap(), vec![key]);
        assert_eq!(
            store.request("req-1").unwrap().unwrap().status,
            RequestStatus::Accepted
        );
        assert_eq!(store.pending().0, 1);

        let record = store.complete(key, events(2)).unwrap();
        assert_eq!(record.status, RequestStatus::Queued);
        assert!(store.inbox_keys().unwrap().is_empty());
        let pending = store.pending_after(None, 10).unwrap();
        assert_eq!(pending.len(), 2);
        assert!(pending[0].seq < pending[1].seq);
        assert_eq!(
            store.pending_after(Some(pending[0].seq), 10).unwrap(),
            vec![pending[1].clone()]
        );
        assert_eq!(store.pending().0, 2);

        store.acknowledged(pending[0].seq, "ev-0").unwrap();
        assert_eq!(
            store.request("req-1").unwrap().unwrap().status,
            RequestStatus::Queued
        );
        store.acknowledged(pending[1].seq, "ev-1").unwrap();
        // A duplicate ack after a resend is harmless.
        store.acknowledged(pending[1].seq, "ev-1").unwrap();
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
    async fn the_bound_refuses_without_losing_anything() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig {
            max_entries: 2,
            ..StoreConfig::default()
        };
        let store = Store::open(dir.path(), config).unwrap();
        store.accept(&request(1)).await.unwrap();
        store.accept(&request(2)).await.unwrap();
        assert!(matches!(
            store.accept(&request(3)).await,
            Err(StoreError::Full(_))
        ));
        assert!(
            store.request("req-3").unwrap().is_none(),
            "a refused request must not be half-kept"
        );
        assert_eq!(store.inbox_keys().unwrap().len(), 2);

        let config = StoreConfig {
            max_bytes: 10,
            ..StoreConfig::default()
        };
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), config).unwrap();
        assert!(matches!(
            store.accept(&request(1)).await,
            Err(StoreError::Full(_))
        ));
        assert_eq!(store.pending(), (0, 0));
    }

    #[tokio::test]
    async fn a_final_reject_dead_letters_and_fails_the_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        let key = store.accept(&request(1)).await.unwrap();
        store.complete(key, events(1)).unwrap();
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
            let key = store.accept(&request(n)).await.unwrap();
            let processed = Processed {
                events: vec![],
                failure: Some(format!("boom {n}")),
                activity: json!({"n": n}),
            };
            assert_eq!(
                store.complete(key, processed).unwrap().status,
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
                let mut inbox: Vec<(u64, String)> = Vec::new();
                let mut outbox: Vec<(u64, String)> = Vec::new();
                let mut status: HashMap<String, RequestStatus> = HashMap::new();
                let mut next = 0u64;
                for op in ops {
                    match op {
                        Op::Accept => {
                            next += 1;
                            let key = store.accept(&request(next)).await.unwrap();
                            inbox.push((key, format!("req-{next}")));
                            status.insert(format!("req-{next}"), RequestStatus::Accepted);
                        }
                        Op::Process(i, n) if !inbox.is_empty() => {
                            let (key, id) = inbox.remove(i % inbox.len());
                            store.complete(key, events(n as usize)).unwrap();
                            let pending: Vec<_> = store.pending_after(None, 1000).unwrap();
                            for entry in pending.iter().filter(|e| e.request_id == id) {
                                outbox.push((entry.seq, id.clone()));
                            }
                            status.insert(id, if n == 0 { RequestStatus::Completed } else { RequestStatus::Queued });
                        }
                        Op::Ack(i) if !outbox.is_empty() => {
                            let (seq, id) = outbox.remove(i % outbox.len());
                            store.acknowledged(seq, &format!("ev-{seq}")).unwrap();
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
                    let mut keys: Vec<u64> = inbox.iter().map(|(k, _)| *k).collect();
                    keys.sort();
                    prop_assert_eq!(store.inbox_keys().unwrap(), keys);
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
