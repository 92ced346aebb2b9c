//! Notifications: what happens after an event is created. The event's recipients (or its form's
//! defaults) resolve to devices through the [`Directory`]; each device gets one notification,
//! PENDING, or SUPPRESSED by flood control; a delivery task ([`deliver`]) sends the pending ones
//! off the ack path, retries failures with back-off and records every attempt.
//!
//! Storage: the sled tree `notifications`, in the event store's database, so the flush before an
//! agent's ack covers an event's notifications and its flood-control counts as well:
//! - `n` ‖ event id (16 bytes) → the event's notifications (JSON, one value per event);
//! - `p` ‖ event id → nothing: the event still has PENDING notifications (what the delivery
//!   task resumes after a restart);
//! - `f` ‖ integration id ‖ 0 ‖ person → the person's flood-control [`Window`] for that
//!   integration.
//!
//! The three are written with one `apply_batch`, so a crash never leaves counts without the
//! notifications that made them. Creating notifications is idempotent (an existing `n` key wins),
//! so a resend of an event whose notifications were lost with an unflushed write creates them.
//!
//! What it deliberately does NOT do: authenticate callers (see [`crate::access`]), create or
//! change events (see [`crate::store`]), or talk to devices itself (see [`deliver`]).

pub mod deliver;
mod view;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::alert_rate::{AlertRateFilter, AlertRateSettings};
use crate::directory::{self, DeviceType, Directory, Recipient, Refusal};
use crate::flood::{FloodSettings, Window};
use crate::metrics::NotificationMetrics;
use crate::store::{Store, StoreError};
use server::exit::ConfigError;

/// Events waiting for the delivery task; beyond this many, the task rescans the pending index.
const QUEUE_CAPACITY: usize = 1024;

/// Default number of delivery attempts before a notification is FAILED.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default wait before the first retry; it doubles with every failed attempt.
pub const DEFAULT_RETRY_INITIAL_MS: u64 = 1_000;
/// Default longest wait between retries.
pub const DEFAULT_RETRY_MAX_MS: u64 = 60_000;

/// Where and how notifications are delivered (`[notifications]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliverySettings {
    /// Device types delivered by POSTing JSON to a URL; the others go to the log deliverer.
    pub webhooks: BTreeMap<DeviceType, hyper::Uri>,
    /// Attempts before a notification is FAILED.
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub retry_initial: Duration,
    /// Longest wait between retries.
    pub retry_max: Duration,
}

impl Default for DeliverySettings {
    fn default() -> Self {
        Self {
            webhooks: BTreeMap::new(),
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_initial: Duration::from_millis(DEFAULT_RETRY_INITIAL_MS),
            retry_max: Duration::from_millis(DEFAULT_RETRY_MAX_MS),
        }
    }
}

impl DeliverySettings {
    /// The wait after `attempts` failed attempts: initial × 2^(attempts−1), capped.
    pub fn backoff(&self, attempts: u32) -> Duration {
        let factor = 1u32 << attempts.saturating_sub(1).min(20);
        self.retry_initial
            .saturating_mul(factor)
            .min(self.retry_max)
    }
}

/// `[notifications]` as written in `central.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDeliverySettings {
    #[serde(default)]
    webhooks: BTreeMap<DeviceType, String>,
    max_attempts: Option<u32>,
    retry_initial_ms: Option<u64>,
    retry_max_ms: Option<u64>,
}

impl RawDeliverySettings {
    /// Validate: webhook URLs are `http://` URLs with a host, attempts at least 1.
    pub fn validate(self, file: &str) -> Result<DeliverySettings, ConfigError> {
        let mut webhooks = BTreeMap::new();
        for (kind, url) in self.webhooks {
            let key = format!("notifications.webhooks.{kind}");
            let uri: hyper::Uri = url
                .parse()
                .map_err(|e| ConfigError::new(file, &key, format!("not a URL: {e}")))?;
            if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
                return Err(ConfigError::new(
                    file,
                    &key,
                    "must not carry credentials (user:password@): they would show in logs and \
                     delivery errors",
                ));
            }
            if uri.scheme_str() != Some("http") || uri.host().is_none() {
                return Err(ConfigError::new(
                    file,
                    &key,
                    "must be an http:// URL with a host (the webhook deliverer speaks plain HTTP; \
                     put a TLS proxy in front for https)",
                ));
            }
            webhooks.insert(kind, uri);
        }
        let max_attempts = self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS);
        if max_attempts == 0 {
            return Err(ConfigError::new(
                file,
                "notifications.max_attempts",
                "must be at least 1",
            ));
        }
        let retry_initial_ms = self.retry_initial_ms.unwrap_or(DEFAULT_RETRY_INITIAL_MS);
        let retry_max_ms = self.retry_max_ms.unwrap_or(DEFAULT_RETRY_MAX_MS);
        if retry_initial_ms == 0 || retry_max_ms < retry_initial_ms {
            return Err(ConfigError::new(
                file,
                "notifications.retry_max_ms",
                "retry_initial_ms must be at least 1 and retry_max_ms at least retry_initial_ms",
            ));
        }
        Ok(DeliverySettings {
            webhooks,
            max_attempts,
            retry_initial: Duration::from_millis(retry_initial_ms),
            retry_max: Duration::from_millis(retry_max_ms),
        })
    }
}

/// Everything about notifications that comes from the configuration and is replaced whole on a
/// reload (SIGHUP): the directory, flood control and delivery settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// People, groups, plans and forms.
    pub directory: Directory,
    /// `[flood_control]`.
    pub flood: FloodSettings,
    /// `[notifications]`.
    pub delivery: DeliverySettings,
    /// `[alert_rate_filter]`; `None` (the default): off.
    pub alert_rate: Option<AlertRateSettings>,
}

/// Where a notification stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NotificationStatus {
    /// Waiting for (another) delivery attempt.
    Pending,
    /// Delivered.
    Delivered,
    /// Not delivered: flood control held it back.
    Suppressed,
    /// Every attempt failed.
    Failed,
    /// The event was terminated or suspended before delivery.
    Cancelled,
}

impl NotificationStatus {
    /// The status as the REST API spells it (`SUPPRESSED`, ...), for the console and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Delivered => "DELIVERED",
            Self::Suppressed => "SUPPRESSED",
            Self::Failed => "FAILED",
            Self::Cancelled => "CANCELLED",
        }
    }
}

/// One notification: one device of one recipient for one event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Notification {
    /// `eventId-n`.
    pub id: String,
    /// The person's `targetName`.
    pub recipient: String,
    /// The group the person was reached through.
    pub via_group: Option<String>,
    /// The device's name.
    pub device_name: String,
    /// The device's type.
    pub device_type: DeviceType,
    /// The device's address.
    pub address: String,
    /// Where it stands.
    pub status: NotificationStatus,
    /// Why it was suppressed, or the last delivery error.
    pub reason: Option<String>,
    /// When it was created (RFC 3339).
    pub created: String,
    /// When it was delivered.
    pub delivered: Option<String>,
    /// Delivery attempts made.
    pub attempts: u32,
    /// Not before this time (ms since the epoch) is the next attempt due.
    pub next_attempt_ms: u64,
}

/// An event's notifications as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    integration_id: String,
    notifications: Vec<Notification>,
}

/// What [`Notifier::admit`] found out about an event's form: its default recipients.
#[derive(Debug, Clone, Default)]
pub struct Admitted {
    defaults: Vec<Recipient>,
}

/// A created event, as [`Notifier::after_create`] needs it.
pub struct Created<'a> {
    /// The event id.
    pub event_id: &'a str,
    /// The integration that created it (flood control counts per integration).
    pub integration_id: &'a str,
    /// The event's `recipients` as JSON text.
    pub recipients: &'a [u8],
    /// From [`Notifier::admit`].
    pub admitted: &'a Admitted,
    /// Whether the integration enables flood control.
    pub flood_control: bool,
    /// The alert rate filter suppressed the event: it notifies nobody.
    pub suppressed: bool,
    /// The event existed already (a resend): `suppressed` is then unknown, and read from the
    /// stored event if the event has no notifications yet.
    pub duplicate: bool,
}

/// Creates, lists, cancels and (with [`deliver::run`]) delivers notifications.
pub struct Notifier {
    store: Store,
    tree: sled::Tree,
    policy: RwLock<Arc<Policy>>,
    /// Serializes read-modify-write of records and windows.
    writer: Mutex<()>,
    queue: mpsc::Sender<u128>,
    /// The queue was full: the delivery task rescans the pending index once it drains.
    overflowed: AtomicBool,
    /// The alert rate filter's counts.
    alert_rate: AlertRateFilter,
    /// Counters for `/metrics`: notifications by status and device type, retries, flood control.
    pub metrics: NotificationMetrics,
}

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notifier").finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

fn key(prefix: u8, id: u128) -> [u8; 17] {
    let mut key = [prefix; 17];
    key[1..].copy_from_slice(&id.to_be_bytes());
    key
}

fn flood_key(integration_id: &str, person: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + integration_id.len() + person.len());
    key.push(b'f');
    key.extend_from_slice(integration_id.as_bytes());
    key.push(0);
    key.extend_from_slice(person.as_bytes());
    key
}

fn corrupt(what: &str, error: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        id: what.to_owned(),
        reason: error.to_string(),
    }
}

impl Notifier {
    /// Open the `notifications` tree of `store` with `policy`. The receiver goes to
    /// [`deliver::run`].
    pub fn open(
        store: Store,
        policy: Policy,
    ) -> Result<(Arc<Self>, mpsc::Receiver<u128>), StoreError> {
        let tree = store.tree("notifications")?;
        let (queue, receiver) = mpsc::channel(QUEUE_CAPACITY);
        let notifier = Arc::new(Self {
            store,
            tree,
            policy: RwLock::new(Arc::new(policy)),
            writer: Mutex::new(()),
            queue,
            overflowed: AtomicBool::new(false),
            alert_rate: AlertRateFilter::default(),
            metrics: NotificationMetrics::default(),
        });
        Ok((notifier, receiver))
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// Replace the policy (a reload). Notifications already created keep their status.
    pub fn reload(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Check an event's form and sender before it is created (see [`Directory::authorize`]).
    pub fn admit(
        &self,
        plan: Option<&str>,
        form: Option<&str>,
        sender: Option<&str>,
    ) -> Result<Admitted, Refusal> {
        let policy = self.policy();
        let found = policy.directory.authorize(plan, form, sender)?;
        Ok(Admitted {
            defaults: found.map(|f| f.form.recipients.clone()).unwrap_or_default(),
        })
    }

    /// Whether the alert rate filter suppresses a new event of `integration_id` to `recipients`
    /// (its `recipients` JSON text): `Some(reason)`, counted only when it goes. Always `None`
    /// while the filter is off.
    pub fn rate_filter(&self, integration_id: &str, recipients: &[u8]) -> Option<String> {
        let settings = self.policy().alert_rate?;
        self.alert_rate
            .check(&settings, integration_id, recipients, now_ms())
    }

    /// Create the notifications of created events (idempotent: an event that has them keeps
    /// them), all in one sled batch. Not durable until the store's next
    /// [`Store::wait_durable`], which the acks wait for anyway. Delivery happens later, on the
    /// delivery task. On an error nothing is written.
    pub fn after_create(&self, events: &[Created<'_>]) -> Result<(), StoreError> {
        let policy = self.policy();
        if policy.directory.is_empty() {
            return Ok(());
        }
        // Resolution needs no lock: only events that reach someone go on.
        let mut planned = Vec::new();
        for created in events.iter().filter(|created| !created.suppressed) {
            let named = serde_json::from_slice::<Value>(created.recipients)
                .map(|value| directory::recipients_from(&value))
                .unwrap_or_default();
            let recipients = if named.is_empty() {
                &created.admitted.defaults
            } else {
                &named
            };
            let reached = policy.directory.resolve(recipients);
            if reached.is_empty() {
                continue;
            }
            let id = uuid::Uuid::parse_str(created.event_id)
                .map_err(|e| corrupt(created.event_id, e))?
                .as_u128();
            // A resend of an event the filter suppressed must not notify now: the rare resend
            // whose notifications are missing reads its event once.
            if created.duplicate
                && !self.tree.contains_key(key(b'n', id))?
                && self
                    .store
                    .get(created.event_id)?
                    .is_some_and(|event| event.get("suppressed").is_some())
            {
                continue;
            }
            planned.push((id, created, reached));
        }
        if planned.is_empty() {
            return Ok(());
        }
        let mut batch = sled::Batch::default();
        let mut queued = Vec::new();
        // (status, device type, integration) of every notification written, counted once written.
        let mut created_counts = Vec::new();
        {
            let _writer = self.lock();
            let now = now_ms();
            let stamp = server::http_util::now_rfc3339();
            // (integration, person) → window, read once and shared by the batch's events.
            let mut windows: HashMap<(&str, String), Window> = HashMap::new();
            let mut written = std::collections::HashSet::new();
            for (id, created, reached) in planned {
                if !written.insert(id) || self.tree.contains_key(key(b'n', id))? {
                    continue;
                }
                let mut pending = false;
                let mut notifications = Vec::with_capacity(reached.len());
                for (position, reach) in reached.into_iter().enumerate() {
                    let kind = reach.device.device_type;
                    let counted = created.flood_control && policy.flood.covers(kind);
                    let admitted = !counted || {
                        let slot = (created.integration_id, reach.person.clone());
                        let window = match windows.entry(slot) {
                            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
                            std::collections::hash_map::Entry::Vacant(entry) => {
                                let stored = self
                                    .tree
                                    .get(flood_key(created.integration_id, &reach.person))?;
                                let window = match stored {
                                    Some(bytes) => serde_json::from_slice(&bytes)
                                        .map_err(|e| corrupt("flood window", e))?,
                                    None => Window::default(),
                                };
                                entry.insert(window)
                            }
                        };
                        window.admit(now, &policy.flood)
                    };
                    let (status, reason) = if admitted {
                        pending = true;
                        (NotificationStatus::Pending, None)
                    } else {
                        (
                            NotificationStatus::Suppressed,
                            Some(format!(
                                "flood control: more than {} notification(s) to {} devices \
                                 within {} s",
                                policy.flood.max_notifications,
                                policy
                                    .flood
                                    .device_types
                                    .iter()
                                    .map(|kind| kind.as_str())
                                    .collect::<Vec<_>>()
                                    .join("/"),
                                policy.flood.period.as_secs()
                            )),
                        )
                    };
                    created_counts.push((status, kind, created.integration_id));
                    notifications.push(Notification {
                        id: format!("{}-{}", created.event_id, position + 1),
                        recipient: reach.person,
                        via_group: reach.via_group,
                        device_name: reach.device.name,
                        device_type: kind,
                        address: reach.device.address,
                        status,
                        reason,
                        created: stamp.clone(),
                        delivered: None,
                        attempts: 0,
                        next_attempt_ms: now,
                    });
                }
                let record = Record {
                    integration_id: created.integration_id.to_owned(),
                    notifications,
                };
                let encoded =
                    serde_json::to_vec(&record).map_err(|e| corrupt("notification", e))?;
                batch.insert(&key(b'n', id)[..], encoded);
                if pending {
                    batch.insert(&key(b'p', id)[..], &[][..]);
                    queued.push(id);
                }
            }
            for ((integration_id, person), window) in windows {
                let encoded = serde_json::to_vec(&window).map_err(|e| corrupt("flood", e))?;
                batch.insert(flood_key(integration_id, &person), encoded);
            }
            self.tree.apply_batch(batch)?;
        }
        for (status, kind, integration_id) in created_counts {
            self.metrics.entered(status.as_str(), kind.as_str());
            if status == NotificationStatus::Suppressed {
                self.metrics.flood_suppressed(integration_id);
            }
        }
        for id in queued {
            self.enqueue(id);
        }
        Ok(())
    }

    fn enqueue(&self, id: u128) {
        if self.queue.try_send(id).is_err() {
            self.overflowed.store(true, Ordering::SeqCst);
        }
    }

    fn record(&self, id: u128) -> Result<Option<Record>, StoreError> {
        match self.tree.get(key(b'n', id))? {
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| corrupt(&uuid::Uuid::from_u128(id).to_string(), e)),
            None => Ok(None),
        }
    }

    /// Write `record` back; the pending index follows whether any notification is PENDING.
    fn put(&self, id: u128, record: &Record) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let encoded = serde_json::to_vec(record).map_err(|e| corrupt("notification", e))?;
        batch.insert(&key(b'n', id)[..], encoded);
        let pending = record
            .notifications
            .iter()
            .any(|n| n.status == NotificationStatus::Pending);
        if pending {
            batch.insert(&key(b'p', id)[..], &[][..]);
        } else {
            batch.remove(&key(b'p', id)[..]);
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// The notifications of event `event_id`, in the shape `GET
    /// /api/xm/1/events/{id}/notifications` lists them (empty when it has none).
    pub fn list(&self, event_id: &str) -> Result<Vec<Value>, StoreError> {
        let Some(id) = uuid::Uuid::parse_str(event_id).ok().map(|u| u.as_u128()) else {
            return Ok(Vec::new());
        };
        let Some(record) = self.record(id)? else {
            return Ok(Vec::new());
        };
        Ok(record
            .notifications
            .iter()
            .map(|n| notification_json(event_id, n))
            .collect())
    }

    /// Cancel the PENDING notifications of `event_id` (it was terminated or suspended). Not
    /// durable until the store's next flush. Returns how many were cancelled.
    pub fn cancel(&self, event_id: &str) -> Result<usize, StoreError> {
        let Some(id) = uuid::Uuid::parse_str(event_id).ok().map(|u| u.as_u128()) else {
            return Ok(0);
        };
        let _writer = self.lock();
        let Some(mut record) = self.record(id)? else {
            return Ok(0);
        };
        let mut cancelled_kinds = Vec::new();
        for notification in &mut record.notifications {
            if notification.status == NotificationStatus::Pending {
                notification.status = NotificationStatus::Cancelled;
                notification.reason = Some("the event was terminated or suspended".into());
                cancelled_kinds.push(notification.device_type);
            }
        }
        let cancelled = cancelled_kinds.len();
        if cancelled > 0 {
            self.put(id, &record)?;
            for kind in cancelled_kinds {
                self.metrics
                    .entered(NotificationStatus::Cancelled.as_str(), kind.as_str());
            }
        }
        Ok(cancelled)
    }

    /// Events with PENDING notifications, oldest first (what a restart resumes).
    fn pending_events(&self) -> Result<Vec<u128>, StoreError> {
        let mut ids = Vec::new();
        for item in self.tree.scan_prefix([b'p']) {
            let (sled_key, _) = item?;
            let bytes: [u8; 16] = sled_key
                .get(1..17)
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| corrupt("pending index", "bad key"))?;
            ids.push(u128::from_be_bytes(bytes));
        }
        Ok(ids)
    }
}

fn notification_json(event_id: &str, n: &Notification) -> Value {
    let mut value = json!({
        "id": n.id,
        "event": {"id": event_id, "links": {"self": format!("/api/xm/1/events/{event_id}")}},
        "recipient": {"id": n.recipient, "targetName": n.recipient, "recipientType": "PERSON"},
        "device": {
            "name": n.device_name,
            "deviceType": n.device_type.as_str(),
            "targetName": format!("{}|{}", n.recipient, n.device_name),
        },
        "status": n.status,
        "created": n.created,
        "attempts": n.attempts,
    });
    if let Some(group) = &n.via_group {
        value["group"] = json!({"targetName": group, "recipientType": "GROUP"});
    }
    if let Some(delivered) = &n.delivered {
        value["delivered"] = Value::from(delivered.as_str());
    }
    if let Some(reason) = &n.reason {
        value["reason"] = Value::from(reason.as_str());
    }
    value
}

#[cfg(test)]
mod tests;
