//! The agent's Prometheus metrics: counters and histograms the request path updates with
//! atomics (no lock on the hot path except the per-integration map), rendered in the text
//! exposition format for `/metrics`. Every series is explained in README.md ("Metrics").
//!
//! It does not collect the gauges that describe state (queue depth, relay connection): the
//! daemon reads those from the store and the relay when `/metrics` is scraped and passes them to
//! [`Metrics::render`].

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::StatusCode;

use server::metrics::label_value;
pub use server::metrics::Histogram;

/// Script runs started and finished (a run waiting for a free script thread counts as started).
#[derive(Default)]
pub struct ScriptRuns {
    /// Runs handed to the script pool.
    pub started: AtomicU64,
    /// Runs that ended, however they ended.
    pub finished: AtomicU64,
}

/// A state value read at scrape time.
pub struct Gauge {
    /// Series name.
    pub name: &'static str,
    /// `counter` or `gauge` (relay counters live in the relay's status).
    pub kind: &'static str,
    /// The HELP text.
    pub help: &'static str,
    /// The value now.
    pub value: f64,
}

/// Counters and histograms updated by ingress, the worker and the script runs.
#[derive(Default)]
pub struct Metrics {
    accepted: AtomicU64,
    client_errors: AtomicU64,
    unavailable: AtomicU64,
    /// Script runs started and finished: the watchdog's sign that the script threads work.
    pub(crate) script_runs: ScriptRuns,
    processed: AtomicU64,
    failed: AtomicU64,
    processing_micros: AtomicU64,
    /// Trigger responses by integration, then status; unknown integrations share one label, so
    /// a caller cannot grow the map with made-up ids. Nested so that counting a known pair
    /// allocates nothing.
    responses: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
    auth_failures: Mutex<BTreeMap<String, u64>>,
    request_duration: Histogram,
    script_duration: Histogram,
    /// Send-to-ack time of events, recorded by the relay.
    pub(crate) ack_latency: Arc<Histogram>,
    script_failures: Mutex<BTreeMap<String, u64>>,
}

/// The label of a trigger for an integration that is not configured.
const UNKNOWN_INTEGRATION: &str = "unknown";

impl Metrics {
    /// Count one ingress response; `integration` is the configured integration a trigger named
    /// (None for other paths or an unknown id: `known` says which).
    pub fn count_response(
        &self,
        integration: Option<(&str, bool)>,
        status: StatusCode,
        took: Duration,
    ) {
        let counter = match status.as_u16() {
            202 => Some(&self.accepted),
            503 => Some(&self.unavailable),
            400..=499 => Some(&self.client_errors),
            _ => None,
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::Relaxed);
        }
        let Some((id, known)) = integration else {
            return;
        };
        let label = if known { id } else { UNKNOWN_INTEGRATION };
        self.request_duration.observe(took);
        {
            let mut responses = lock(&self.responses);
            let by_status = match responses.get_mut(label) {
                Some(by_status) => by_status,
                None => responses.entry(label.to_owned()).or_default(),
            };
            *by_status.entry(status.as_u16()).or_default() += 1;
        }
        if matches!(status.as_u16(), 401 | 403) {
            *lock(&self.auth_failures)
                .entry(label.to_owned())
                .or_default() += 1;
        }
    }

    /// Count one processed request.
    pub fn count_processed(&self, failed: bool, took: Duration) {
        self.processed.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.processing_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Record one script run: its duration and, when it failed, the kind of failure.
    pub fn observe_script(&self, took: Duration, failure: Option<scripts::ErrorKind>) {
        self.script_duration.observe(took);
        if let Some(kind) = failure {
            *lock(&self.script_failures)
                .entry(kind.to_string())
                .or_default() += 1;
        }
    }

    /// The whole exposition: these metrics plus the scrape-time `gauges` and the store's
    /// `flush_latency`.
    pub fn render(&self, gauges: &[Gauge], flush_latency: &Histogram) -> String {
        let mut out = String::new();
        #[rustfmt::skip]
        let counters: [(&str, &str, &AtomicU64); 6] = [
            ("xmagent_requests_accepted_total", "Triggers answered 202.", &self.accepted),
            ("xmagent_responses_client_error_total", "Responses with a 4xx status.", &self.client_errors),
            ("xmagent_responses_unavailable_total", "Responses with a 503 status.", &self.unavailable),
            ("xmagent_requests_processed_total", "Requests processed (create_event at acceptance, scripts by the worker).", &self.processed),
            ("xmagent_requests_failed_total", "Requests whose action failed.", &self.failed),
            ("xmagent_processing_micros_total", "Time spent processing requests.", &self.processing_micros),
        ];
        for (name, help, value) in counters {
            let value = value.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        for gauge in gauges {
            let (name, kind, help, value) = (gauge.name, gauge.kind, gauge.help, gauge.value);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        let name = "xmagent_requests_total";
        let _ = writeln!(out, "# HELP {name} Trigger responses by integration and status code.\n# TYPE {name} counter");
        for (integration, by_status) in lock(&self.responses).iter() {
            let integration = label_value(integration);
            for (status, count) in by_status {
                let _ = writeln!(
                    out,
                    "{name}{{integration=\"{integration}\",status=\"{status}\"}} {count}"
                );
            }
        }
        let name = "xmagent_auth_failures_total";
        let _ = writeln!(out, "# HELP {name} Triggers refused with 401 or 403, by integration.\n# TYPE {name} counter");
        for (integration, count) in lock(&self.auth_failures).iter() {
            let integration = label_value(integration);
            let _ = writeln!(out, "{name}{{integration=\"{integration}\"}} {count}");
        }
        let name = "xmagent_script_failures_total";
        let _ = writeln!(out, "# HELP {name} Script runs that failed, by kind (syntax, exception, timeout, memory, limit).\n# TYPE {name} counter");
        for (kind, count) in lock(&self.script_failures).iter() {
            let _ = writeln!(out, "{name}{{kind=\"{kind}\"}} {count}");
        }
        self.request_duration.render(
            &mut out,
            "xmagent_request_duration_seconds",
            "Time from request to answer of triggers (202 includes the durable write).",
        );
        self.ack_latency.render(
            &mut out,
            "xmagent_relay_ack_latency_seconds",
            "Time from sending an event to the central's ack.",
        );
        flush_latency.render(
            &mut out,
            "xmagent_store_flush_duration_seconds",
            "Time of one group commit: writing the batched entries and flushing them to disk.",
        );
        self.script_duration.render(
            &mut out,
            "xmagent_script_duration_seconds",
            "Duration of script runs (transform and run_script), HTTP calls included.",
        );
        out
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_integrations_share_one_label_and_auth_failures_are_counted() {
        let metrics = Metrics::default();
        let ms = Duration::from_millis(1);
        metrics.count_response(Some(("alerts", true)), StatusCode::ACCEPTED, ms);
        metrics.count_response(Some(("alerts", true)), StatusCode::UNAUTHORIZED, ms);
        metrics.count_response(Some(("made-up-1", false)), StatusCode::NOT_FOUND, ms);
        metrics.count_response(Some(("made-up-2", false)), StatusCode::NOT_FOUND, ms);
        metrics.count_response(None, StatusCode::OK, ms);
        metrics.observe_script(ms, Some(scripts::ErrorKind::Timeout));
        let out = metrics.render(&[], &Histogram::default());
        assert!(
            out.contains("xmagent_requests_total{integration=\"alerts\",status=\"202\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("xmagent_requests_total{integration=\"unknown\",status=\"404\"} 2\n"),
            "{out}"
        );
        assert!(!out.contains("made-up"), "{out}");
        assert!(
            out.contains("xmagent_auth_failures_total{integration=\"alerts\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("xmagent_script_failures_total{kind=\"timeout\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("xmagent_request_duration_seconds_count 4\n"),
            "{out}"
        );
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
