//! The delivery task: sends PENDING notifications, one event at a time, through the deliverer of
//! their device type, and records each attempt (DELIVERED, or the error and when to try again,
//! FAILED after `max_attempts`).
//!
//! Two deliverers: the webhook deliverer POSTs the notification as JSON to the URL configured
//! for its device type (`[notifications.webhooks]`), any 2xx counting as delivered; the log
//! deliverer (every other device type) writes one INFO line and always succeeds.
//!
//! It runs off the ack path: agents' acks never wait for it. What it deliberately does NOT do:
//! decide who is notified or suppress anything (that is settled when notifications are
//! created, see [`super::Notifier::after_create`]), or speak TLS (webhooks are plain HTTP).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use super::{now_ms, Notification, NotificationStatus, Notifier};
use crate::metrics::Metrics;
use crate::store::StoreError;

/// The longest one webhook call may take.
const WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// Events delivered at once (their calls run concurrently; one flush records them all).
const BATCH: usize = 32;

/// Deliver until `shutdown` turns true: first every event left PENDING by an earlier run, then
/// events as they are created, and retries when they are due (one timer per event, in memory:
/// after a restart the pending index brings them back).
pub async fn run(
    notifier: Arc<Notifier>,
    mut queue: mpsc::Receiver<u128>,
    mut shutdown: watch::Receiver<bool>,
) {
    let client: HttpClient =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build(HttpConnector::new());
    let mut backlog: VecDeque<u128> = match notifier.pending_events() {
        Ok(ids) => ids.into(),
        Err(error) => {
            tracing::error!(%error, "cannot read pending notifications; they wait for a restart");
            VecDeque::new()
        }
    };
    if !backlog.is_empty() {
        tracing::info!(events = backlog.len(), "resuming pending notifications");
    }
    let mut retries: HashMap<u128, Instant> = HashMap::new();
    loop {
        if *shutdown.borrow() {
            return;
        }
        let take = backlog.len().min(BATCH);
        let mut batch: Vec<u128> = backlog.drain(..take).collect();
        if batch.is_empty() {
            if notifier.overflowed.swap(false, Ordering::SeqCst) {
                backlog = notifier.pending_events().unwrap_or_default().into();
                continue;
            }
            let next_retry = retries.values().min().copied();
            tokio::select! {
                id = queue.recv() => match id {
                    Some(id) => batch.push(id),
                    None => return,
                },
                () = sleep_until(next_retry), if next_retry.is_some() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(id) => batch.push(id),
                    Err(_) => break,
                }
            }
        }
        let now = Instant::now();
        retries.retain(|id, due| {
            let take = *due <= now && batch.len() < BATCH;
            if take {
                batch.push(*id);
            }
            !take
        });
        batch.sort_unstable();
        batch.dedup();
        let outcomes = join_all(
            batch
                .iter()
                .map(|&id| deliver_event(&notifier, &client, id)),
        )
        .await;
        for (id, outcome) in batch.into_iter().zip(outcomes) {
            match outcome {
                Ok(Some(wait)) => {
                    retries.insert(id, Instant::now() + wait);
                }
                Ok(None) => {
                    retries.remove(&id);
                }
                Err(error) => {
                    // The store failed: try the event again later rather than forget it.
                    tracing::error!(%error, "notification delivery could not be recorded");
                    let wait = notifier.policy().delivery.retry_max;
                    retries.insert(id, Instant::now() + wait);
                }
            }
        }
        // Attempts are recorded durably, so a restart neither forgets nor repeats them.
        if let Err(error) = notifier.store.wait_durable().await {
            tracing::error!(%error, "cannot make notification attempts durable");
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    if let Some(due) = due {
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Attempt every due PENDING notification of event `id` and record the outcomes. Returns how
/// long until the next retry is due, if any notification is still PENDING. Not durable until
/// the caller's flush.
async fn deliver_event(
    notifier: &Notifier,
    client: &HttpClient,
    id: u128,
) -> Result<Option<Duration>, StoreError> {
    let Some(record) = notifier.record(id)? else {
        return Ok(None);
    };
    let event_id = uuid::Uuid::from_u128(id).to_string();
    let policy = notifier.policy();
    let now = now_ms();
    let mut outcomes = Vec::new();
    // What a webhook shows of the event (its priority and properties), read once when needed.
    let mut message: Option<Value> = None;
    for (position, notification) in record.notifications.iter().enumerate() {
        if notification.status != NotificationStatus::Pending || notification.next_attempt_ms > now
        {
            continue;
        }
        let outcome = match policy.delivery.webhooks.get(&notification.device_type) {
            Some(url) => {
                if message.is_none() {
                    let event = notifier.store.get(&event_id)?.unwrap_or(Value::Null);
                    message = Some(json!({
                        "priority": event.get("priority"),
                        "properties": event.get("properties"),
                    }));
                }
                let message = message.as_ref().unwrap_or(&Value::Null);
                post(client, url, &event_id, message, notification).await
            }
            None => {
                tracing::info!(event = %event_id, notification = %notification.id,
                    recipient = %notification.recipient, device = %notification.device_name,
                    device_type = %notification.device_type, "notification delivered (log deliverer)");
                Ok(())
            }
        };
        outcomes.push((position, outcome));
    }
    let next_due = {
        let _writer = notifier.lock();
        // Re-read: the event may have been terminated while the calls were running.
        let Some(mut record) = notifier.record(id)? else {
            return Ok(None);
        };
        let now = now_ms();
        // (status entered or None for a retry, device type), counted once written.
        let mut changes = Vec::new();
        for (position, outcome) in outcomes {
            let Some(n) = record.notifications.get_mut(position) else {
                continue;
            };
            if n.status != NotificationStatus::Pending {
                continue;
            }
            n.attempts += 1;
            match outcome {
                Ok(()) => {
                    n.status = NotificationStatus::Delivered;
                    n.delivered = Some(server::http_util::now_rfc3339());
                    n.reason = None;
                    changes.push((Some(n.status), n.device_type));
                }
                Err(reason) => {
                    tracing::warn!(event = %event_id, notification = %n.id, attempts = n.attempts,
                        %reason, "notification delivery failed");
                    if n.attempts >= policy.delivery.max_attempts {
                        n.status = NotificationStatus::Failed;
                        changes.push((Some(n.status), n.device_type));
                    } else {
                        changes.push((None, n.device_type));
                        let wait = policy.delivery.backoff(n.attempts);
                        n.next_attempt_ms =
                            now.saturating_add(u64::try_from(wait.as_millis()).unwrap_or(0));
                    }
                    n.reason = Some(reason);
                }
            }
        }
        notifier.put(id, &record)?;
        for (status, kind) in changes {
            match status {
                Some(status) => notifier.metrics.entered(status.as_str(), kind.as_str()),
                None => Metrics::add(&notifier.metrics.retried, 1),
            }
        }
        record
            .notifications
            .iter()
            .filter(|n| n.status == NotificationStatus::Pending)
            .map(|n| Duration::from_millis(n.next_attempt_ms.saturating_sub(now)))
            .min()
    };
    Ok(next_due)
}

/// POST one notification to a webhook, with the event's priority and properties (`message`);
/// `Err` names the failure (no credentials are involved).
async fn post(
    client: &HttpClient,
    url: &hyper::Uri,
    event_id: &str,
    message: &Value,
    notification: &Notification,
) -> Result<(), String> {
    let body = json!({
        "eventId": event_id,
        "priority": message["priority"],
        "properties": message["properties"],
        "notificationId": notification.id,
        "recipient": notification.recipient,
        "group": notification.via_group,
        "device": {
            "name": notification.device_name,
            "deviceType": notification.device_type.as_str(),
            "address": notification.address,
        },
    });
    let request = hyper::Request::post(url.clone())
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("cannot build the webhook request: {e}"))?;
    let call = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("webhook {url} unreachable: {e}"))?;
        let status = response.status();
        // Read the (ignored) answer so the connection can be reused.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("webhook {url} answered HTTP {}", status.as_u16()))
        }
    };
    match tokio::time::timeout(WEBHOOK_TIMEOUT, call).await {
        Ok(result) => result,
        Err(_) => Err(format!(
            "webhook {url} did not answer within {WEBHOOK_TIMEOUT:?}"
        )),
    }
}
