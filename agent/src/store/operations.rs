//! What an operator does to the store of a running agent: look into the queue (`xmagent queue
//! list`, `xmagent status`), send dead letters again (`queue retry`), drop them (`queue purge
//! --dead`), and the `[store]` bounds a reload changes without a restart ([`LiveBounds`]).
//!
//! It does not decide who may do this (the admin endpoint checks the admin credential) and it
//! never removes a pending entry: only dead letters, which the central already refused for good,
//! can be purged.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use integration::request::InboundRequest;

use super::{be, outbox_parts, DeadLetter, OutboxMeta, Store, StoreConfig, StoreError};

/// The `[store]` bounds read on every request, as atomics so a reload can change them while
/// ingress runs. The other `[store]` keys size sled at open and need a restart.
pub(super) struct LiveBounds {
    max_entries: AtomicU64,
    max_bytes: AtomicU64,
    activity_per_integration: AtomicU64,
    min_free_mib: AtomicU64,
}

impl LiveBounds {
    pub(super) fn new(config: &StoreConfig) -> Self {
        Self {
            max_entries: AtomicU64::new(config.max_entries),
            max_bytes: AtomicU64::new(config.max_bytes),
            activity_per_integration: AtomicU64::new(config.activity_per_integration),
            min_free_mib: AtomicU64::new(config.min_free_mib),
        }
    }

    pub(super) fn max_entries(&self) -> u64 {
        self.max_entries.load(Ordering::Relaxed)
    }

    pub(super) fn max_bytes(&self) -> u64 {
        self.max_bytes.load(Ordering::Relaxed)
    }

    pub(super) fn activity_per_integration(&self) -> u64 {
        self.activity_per_integration.load(Ordering::Relaxed)
    }

    pub(super) fn min_free_mib(&self) -> u64 {
        self.min_free_mib.load(Ordering::Relaxed)
    }
}

/// Where a queued entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum QueueState {
    /// In the inbox: accepted, its script has not run yet.
    Accepted,
    /// In the outbox: an event waiting for the central's acknowledgement.
    Queued,
    /// Refused by the central for good; kept until retried or purged.
    Dead,
}

/// One line of `xmagent queue list`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct QueueEntry {
    /// The inbox key or outbox seq (the dead letter's original seq): what `queue retry` takes.
    pub id: u64,
    /// Where the entry is.
    pub state: QueueState,
    /// The request it belongs to.
    pub request_id: String,
    /// The integration that handled it.
    pub integration_id: String,
    /// When the request was accepted (RFC 3339); `None` (JSON `null`) for a dead letter, which
    /// does not keep it.
    pub received_at: Option<String>,
    /// The central's reason, for a dead letter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Store {
    /// Apply the reloadable `[store]` bounds: entry and byte bounds take effect for the next
    /// request, the activity retention at the next pruning.
    pub fn set_bounds(&self, config: &StoreConfig) {
        let bounds = &self.inner.bounds;
        bounds
            .max_entries
            .store(config.max_entries, Ordering::Relaxed);
        bounds.max_bytes.store(config.max_bytes, Ordering::Relaxed);
        bounds
            .activity_per_integration
            .store(config.activity_per_integration, Ordering::Relaxed);
        bounds
            .min_free_mib
            .store(config.min_free_mib, Ordering::Relaxed);
    }

    /// Up to `max` entries of each of the inbox, the outbox and the dead letters (flushed
    /// entries only), oldest first within each.
    pub fn queue_entries(&self, max: usize) -> Result<Vec<QueueEntry>, StoreError> {
        let inner = &self.inner;
        let mut entries = Vec::new();
        for (key, value) in inner.inbox.range(0, u64::MAX, max)? {
            let request: InboundRequest = serde_json::from_slice(&value)?;
            entries.push(QueueEntry {
                id: key,
                state: QueueState::Accepted,
                request_id: request.request_id,
                integration_id: request.integration_id,
                received_at: Some(request.received_at),
                reason: None,
            });
        }
        for (seq, value) in inner.outbox.range(0, u64::MAX, max)? {
            let (meta, _) = outbox_parts(&value)?;
            entries.push(QueueEntry {
                id: seq,
                state: QueueState::Queued,
                request_id: meta.request_id,
                integration_id: meta.integration_id,
                received_at: Some(meta.received_at),
                reason: None,
            });
        }
        for item in inner.dead_letters.iter().take(max) {
            let (key, value) = item?;
            let letter: DeadLetter = serde_json::from_slice(&value)?;
            entries.push(QueueEntry {
                id: dead_letter_id(&key)?,
                state: QueueState::Dead,
                request_id: letter.entry.request_id,
                integration_id: letter.entry.integration_id,
                received_at: None,
                reason: Some(format!("{} {}", letter.status, letter.message)),
            });
        }
        Ok(entries)
    }

    /// Dead letters kept now.
    pub fn dead_letter_count(&self) -> usize {
        self.inner.dead_letters.len()
    }

    /// Send dead letter `id` again: its event goes back into the outbox (durably, before the
    /// dead letter is removed) and the request reads QUEUED until the central answers. The
    /// central dedupes on (agent, requestId, index), so a crash between the two writes, which
    /// brings the dead letter back, costs no duplicate event. `Ok(false)` when there is no such
    /// dead letter.
    pub async fn retry_dead_letter(&self, id: u64) -> Result<bool, StoreError> {
        let inner = &self.inner;
        let Some(raw) = inner.dead_letters.get(be(id))? else {
            return Ok(false);
        };
        let letter: DeadLetter = serde_json::from_slice(&raw)?;
        let event = letter.entry;
        let meta = OutboxMeta {
            request_id: event.request_id.clone(),
            integration_id: event.integration_id.clone(),
            index: event.index,
            // A dead letter does not keep the acceptance time; the retry's time stands in.
            received_at: server::http_util::now_rfc3339(),
            record_at_ack: true,
        };
        let trigger = serde_json::to_string(&event.trigger)?;
        self.append_event_durably(&meta, &integration::action::Routing::of(&event), &trigger)
            .await?;
        inner.dead_letters.remove(be(id))?;
        self.wait_for_flush().await?;
        Ok(true)
    }

    /// Every dead letter's id, for `queue retry --all-dead`.
    pub fn dead_letter_ids(&self) -> Result<Vec<u64>, StoreError> {
        self.inner
            .dead_letters
            .iter()
            .keys()
            .map(|key| dead_letter_id(&key?))
            .collect()
    }

    /// Drop every dead letter (durably); returns how many there were.
    pub async fn purge_dead_letters(&self) -> Result<usize, StoreError> {
        let count = self.inner.dead_letters.len();
        self.inner.dead_letters.clear()?;
        self.wait_for_flush().await?;
        Ok(count)
    }
}

fn dead_letter_id(key: &[u8]) -> Result<u64, StoreError> {
    key.try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| StoreError::Corrupt("a dead-letter key is not 8 bytes".into()))
}
