//! What the web console shows of notifications: [`Notifier`] implements
//! [`console::source::Notifications`], so an event page lists its notifications (with the flood
//! control rule of the SUPPRESSED ones) and the overview draws delivered against suppressed per
//! minute and integration.
//!
//! Reads only: the records are the ones [`Notifier`] stores, scanned by event id, which is
//! time-ordered (UUID v7), so the picture reads the newest events' records and no older.
//!
//! What it deliberately does NOT do: render anything (see [`crate::console::pages`]), change a
//! notification, or count events the alert rate filter suppressed (they have no notifications;
//! the event page shows their rule from the event itself).

use std::collections::BTreeMap;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::{key, Notification, NotificationStatus, Notifier, Record};
use crate::console::source::{MinuteCount, NotificationView, Notifications};
use crate::console::summary::MAX_EVENTS;
use crate::store::first_id_at;

/// How long before the picture's start an event may have been created and still have a
/// notification delivered within it (retries back off up to a minute, a few times).
const DELIVERY_LOOKBACK_MS: u64 = 60 * 60 * 1_000;

const MINUTE_MS: u64 = 60_000;

/// Unix milliseconds of an RFC 3339 time the notifier wrote.
fn millis(rfc3339: &str) -> Option<u64> {
    let at = OffsetDateTime::parse(rfc3339, &Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// The console's row for one notification: the time is when it was delivered, or else when it
/// was created (and, for SUPPRESSED, held back).
fn view(notification: &Notification) -> NotificationView {
    NotificationView {
        recipient: notification.recipient.clone(),
        device: format!(
            "{} ({})",
            notification.device_name,
            notification.device_type.as_str()
        ),
        status: notification.status.as_str().to_owned(),
        rule: (notification.status == NotificationStatus::Suppressed)
            .then(|| notification.reason.clone())
            .flatten(),
        at: Some(
            notification
                .delivered
                .clone()
                .unwrap_or_else(|| notification.created.clone()),
        ),
    }
}

/// (minute start in Unix milliseconds, integration id) → (delivered, suppressed).
type Minutes = BTreeMap<(u64, String), (u64, u64)>;

/// Add `record`'s delivered and suppressed notifications at or after `since_ms` to `minutes`.
fn count_minutes(record: &Record, since_ms: u64, minutes: &mut Minutes) {
    for notification in &record.notifications {
        let (at, delivered) = match notification.status {
            NotificationStatus::Delivered => (notification.delivered.as_deref(), true),
            NotificationStatus::Suppressed => (Some(notification.created.as_str()), false),
            _ => continue,
        };
        let Some(at) = at.and_then(millis).filter(|at| *at >= since_ms) else {
            continue;
        };
        let slot = (at - at % MINUTE_MS, record.integration_id.clone());
        let (delivered_count, suppressed_count) = minutes.entry(slot).or_default();
        if delivered {
            *delivered_count += 1;
        } else {
            *suppressed_count += 1;
        }
    }
}

impl Notifications for Notifier {
    fn of_event(&self, event_id: &str) -> Result<Vec<NotificationView>, String> {
        let Some(id) = uuid::Uuid::parse_str(event_id).ok().map(|u| u.as_u128()) else {
            return Ok(Vec::new());
        };
        match self.record(id) {
            Ok(record) => Ok(record
                .map(|record| record.notifications.iter().map(view).collect())
                .unwrap_or_default()),
            Err(error) => {
                tracing::error!(%error, event = %event_id, "cannot read notifications for the console");
                Err("the notification store could not be read (see the central's log)".to_owned())
            }
        }
    }

    fn per_minute(&self, since_ms: u64) -> Vec<MinuteCount> {
        let from = key(
            b'n',
            first_id_at(since_ms.saturating_sub(DELIVERY_LOOKBACK_MS)),
        );
        let mut minutes = Minutes::new();
        for item in self
            .tree
            .range(from..=key(b'n', u128::MAX))
            .rev()
            .take(MAX_EVENTS)
        {
            let record = item.map_err(|e| e.to_string()).and_then(|(_, bytes)| {
                serde_json::from_slice::<Record>(&bytes).map_err(|e| e.to_string())
            });
            match record {
                Ok(record) => count_minutes(&record, since_ms, &mut minutes),
                Err(error) => {
                    tracing::error!(%error, "cannot read a notification record for the console");
                }
            }
        }
        minutes
            .into_iter()
            .map(
                |((minute_ms, integration), (delivered, suppressed))| MinuteCount {
                    minute_ms,
                    integration,
                    delivered,
                    suppressed,
                },
            )
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::DeviceType;

    fn notification(status: NotificationStatus, created: &str) -> Notification {
        Notification {
            id: "e-1".into(),
            recipient: "oncall".into(),
            via_group: None,
            device_name: "SMS".into(),
            device_type: DeviceType::TextPhone,
            address: "+15550100".into(),
            status,
            reason: Some("flood control: more than 1 notification(s)".into()),
            created: created.into(),
            delivered: None,
            attempts: 0,
            next_attempt_ms: 0,
        }
    }

    #[test]
    fn a_suppressed_notification_shows_its_rule_and_a_failed_one_none() {
        let suppressed = view(&notification(
            NotificationStatus::Suppressed,
            "2026-01-01T10:00:00Z",
        ));
        assert_eq!(suppressed.device, "SMS (TEXT_PHONE)");
        assert_eq!(suppressed.status, "SUPPRESSED");
        assert_eq!(
            suppressed.rule.as_deref(),
            Some("flood control: more than 1 notification(s)")
        );
        let failed = view(&notification(
            NotificationStatus::Failed,
            "2026-01-01T10:00:00Z",
        ));
        assert_eq!(failed.rule, None, "a delivery error is not a rule");
        let mut delivered = notification(NotificationStatus::Delivered, "2026-01-01T10:00:00Z");
        delivered.delivered = Some("2026-01-01T10:00:02Z".into());
        assert_eq!(view(&delivered).at.as_deref(), Some("2026-01-01T10:00:02Z"));
    }

    #[test]
    fn minutes_count_delivered_at_delivery_and_suppressed_at_creation() {
        let since = millis("2026-01-01T10:00:00Z").expect("a time");
        let mut delivered = notification(NotificationStatus::Delivered, "2026-01-01T09:59:59Z");
        delivered.delivered = Some("2026-01-01T10:01:30.5Z".into());
        let record = Record {
            integration_id: "flood-demo".into(),
            notifications: vec![
                delivered,
                notification(NotificationStatus::Suppressed, "2026-01-01T10:01:10Z"),
                notification(NotificationStatus::Suppressed, "2026-01-01T09:59:00Z"),
                notification(NotificationStatus::Pending, "2026-01-01T10:01:10Z"),
            ],
        };
        let mut minutes = Minutes::new();
        count_minutes(&record, since, &mut minutes);
        assert_eq!(
            minutes.into_iter().collect::<Vec<_>>(),
            [((since + MINUTE_MS, "flood-demo".to_owned()), (1, 1))],
            "before the start and pending are not counted"
        );
    }
}
