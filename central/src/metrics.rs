//! Counters the central exposes on `/metrics` in the Prometheus text format, so an operator can
//! see that agents are connected and events flow without reading logs: the same style as the
//! agent's (per-agent counters, latency histograms from `server::metrics`). Every series is
//! explained in README.md ("Metrics of the central").
//!
//! It does not read the store or the connections; the places that create events, answer frames
//! and flush count here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use server::metrics::Histogram;

/// Process-wide counters; cheap atomics so the hot path never takes a lock to count.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Events created (first send of a triple).
    pub events_created: AtomicU64,
    /// `event.create` frames answered with an existing event (resends).
    pub duplicates_answered: AtomicU64,
    /// Agent websockets currently past `hello`.
    pub agents_connected: AtomicI64,
    /// `event.create` frames answered with `reject`.
    pub frames_rejected: AtomicU64,
    /// Status changes made through REST.
    pub status_changes: AtomicU64,
    /// Events created per agent id (bounded by the configured agents).
    created_by_agent: Mutex<BTreeMap<String, u64>>,
    /// How long each batch's flush and sync took before its acks went out.
    pub store_flush: Histogram,
}

/// Notification counters, kept by [`crate::notify::Notifier`] where notifications change, so an
/// operator can alert on failed deliveries and flood control without reading the store.
#[derive(Debug, Default)]
pub struct NotificationMetrics {
    /// Notifications that entered each (status, device type); both come from fixed lists.
    by_status: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    /// Failed delivery attempts that will be tried again.
    pub retried: AtomicU64,
    /// Notifications SUPPRESSED by flood control, per integration id.
    flood_suppressed: Mutex<BTreeMap<String, u64>>,
}

impl NotificationMetrics {
    /// Count one notification entering `status` (PENDING when created) on a `device_type`.
    pub fn entered(&self, status: &'static str, device_type: &'static str) {
        let mut by_status = self.by_status.lock().unwrap_or_else(|p| p.into_inner());
        *by_status.entry((status, device_type)).or_default() += 1;
    }

    /// Count one notification of `integration` held back by flood control.
    pub fn flood_suppressed(&self, integration: &str) {
        count_under(&self.flood_suppressed, integration, 1);
    }

    fn render_into(&self, out: &mut String) {
        let name = "xmcentral_notifications_total";
        let _ = writeln!(
            out,
            "# HELP {name} Notifications that entered each status (PENDING when created), by \
             device type.\n# TYPE {name} counter"
        );
        let by_status = self.by_status.lock().unwrap_or_else(|p| p.into_inner());
        for ((status, device_type), count) in by_status.iter() {
            let _ = writeln!(
                out,
                "{name}{{status=\"{status}\",device_type=\"{device_type}\"}} {count}"
            );
        }
        drop(by_status);
        let name = "xmcentral_notification_retries_total";
        let _ = writeln!(
            out,
            "# HELP {name} Failed delivery attempts that will be tried again.\n# TYPE {name} \
             counter\n{name} {}",
            self.retried.load(Ordering::Relaxed)
        );
        render_by_label(
            out,
            "xmcentral_notifications_flood_suppressed_total",
            "Notifications held back by flood control, by integration.",
            "integration",
            &self.flood_suppressed,
        );
    }
}

/// Add `n` to the count of `label` (a new label starts at zero).
fn count_under(counts: &Mutex<BTreeMap<String, u64>>, label: &str, n: u64) {
    let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
    match counts.get_mut(label) {
        Some(count) => *count += n,
        None => {
            counts.insert(label.to_owned(), n);
        }
    }
}

/// Render counter `name` with one series per label value of `label`.
fn render_by_label(
    out: &mut String,
    name: &str,
    help: &str,
    label: &str,
    counts: &Mutex<BTreeMap<String, u64>>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    let counts = counts.lock().unwrap_or_else(|p| p.into_inner());
    for (value, count) in counts.iter() {
        let value = server::metrics::label_value(value);
        let _ = writeln!(out, "{name}{{{label}=\"{value}\"}} {count}");
    }
}

impl Metrics {
    /// Add `n` to a counter.
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Count `n` events created for `agent`.
    pub fn created_for(&self, agent: &str, n: u64) {
        Self::add(&self.events_created, n);
        count_under(&self.created_by_agent, agent, n);
    }

    /// Render every metric, with the notifier's `notifications`, in the Prometheus text
    /// exposition format (version 0.0.4).
    pub fn render(&self, notifications: &NotificationMetrics) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: i64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        };
        let counter =
            |value: &AtomicU64| i64::try_from(value.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
        metric(
            "xmcentral_events_created_total",
            "counter",
            "Events created from agent event.create frames.",
            counter(&self.events_created),
        );
        metric(
            "xmcentral_duplicates_answered_total",
            "counter",
            "event.create frames answered with an event created earlier (resends).",
            counter(&self.duplicates_answered),
        );
        metric(
            "xmcentral_agents_connected",
            "gauge",
            "Agent websocket connections past hello.",
            self.agents_connected.load(Ordering::Relaxed),
        );
        metric(
            "xmcentral_frames_rejected_total",
            "counter",
            "event.create frames answered with reject.",
            counter(&self.frames_rejected),
        );
        metric(
            "xmcentral_status_changes_total",
            "counter",
            "Event status changes made through REST.",
            counter(&self.status_changes),
        );
        render_by_label(
            &mut out,
            "xmcentral_events_created_by_agent_total",
            "Events created from each agent's frames.",
            "agent",
            &self.created_by_agent,
        );
        self.store_flush.render(
            &mut out,
            "xmcentral_store_flush_seconds",
            "Flush and sync of one batch of events before its acks.",
        );
        notifications.render_into(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_help_and_type() {
        let metrics = Metrics::default();
        metrics.created_for("agent-01", 2);
        metrics.created_for("agent-\"2", 1);
        metrics.agents_connected.fetch_add(2, Ordering::Relaxed);
        metrics
            .store_flush
            .observe(std::time::Duration::from_millis(2));
        let notifications = NotificationMetrics::default();
        notifications.entered("SUPPRESSED", "TEXT_PHONE");
        notifications.entered("SUPPRESSED", "TEXT_PHONE");
        notifications.entered("DELIVERED", "EMAIL");
        notifications.flood_suppressed("flood-\"demo");
        Metrics::add(&notifications.retried, 3);
        let text = metrics.render(&notifications);
        assert!(text.contains(
            "\nxmcentral_notifications_total{status=\"SUPPRESSED\",device_type=\"TEXT_PHONE\"} 2\n"
        ));
        assert!(text.contains(
            "\nxmcentral_notifications_total{status=\"DELIVERED\",device_type=\"EMAIL\"} 1\n"
        ));
        assert!(text.contains("# TYPE xmcentral_notification_retries_total counter\n"));
        assert!(text.contains("\nxmcentral_notification_retries_total 3\n"));
        assert!(
            text.contains("\nxmcentral_notifications_flood_suppressed_total{integration=\"flood-\\\"demo\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("# TYPE xmcentral_events_created_total counter\n"));
        assert!(text.contains("\nxmcentral_events_created_total 3\n"));
        assert!(text.contains("\nxmcentral_events_created_by_agent_total{agent=\"agent-01\"} 2\n"));
        assert!(text.contains("{agent=\"agent-\\\"2\"} 1\n"), "{text}");
        assert!(text.contains("\nxmcentral_store_flush_seconds_count 1\n"));
        assert!(text.contains("\nxmcentral_agents_connected 2\n"));
        assert!(text.contains("\nxmcentral_frames_rejected_total 0\n"));
    }
}
