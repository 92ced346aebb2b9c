//! Notification creation, flood control across restarts, cancellation and delivery.

use std::time::{Duration, Instant};

use super::*;

const DIRECTORY: &str = r#"
[[people]]
target_name = "oncall"
devices = [
  { name = "Work Email", device_type = "EMAIL", address = "oncall@example.com" },
  { name = "Mobile", device_type = "TEXT_PHONE", address = "+15550100" },
]
[[groups]]
target_name = "ops"
members = ["oncall"]
[[plans]]
name = "Ops"
[[plans.forms]]
name = "Alert"
recipients = ["ops"]
"#;

fn policy(extra: &str) -> Policy {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::config::parse(&format!("{DIRECTORY}\n{extra}"), "test.toml", dir.path())
        .expect("valid config")
        .notifications
}

/// Open the store (again): after a previous handle was dropped, sled's threads may hold its
/// file lock a moment longer, so retry briefly.
fn open(dir: &std::path::Path, policy: Policy) -> (Arc<Notifier>, mpsc::Receiver<u128>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let store = loop {
        match Store::open(dir) {
            Ok(store) => break store,
            Err(error) => {
                assert!(Instant::now() < deadline, "cannot open the store: {error}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    Notifier::open(store, policy).expect("open notifier")
}

/// Insist that the central's `/metrics` text, with `notifier`'s counters, has each of `lines`.
fn assert_metrics(notifier: &Notifier, lines: &[&str]) {
    let metrics = crate::metrics::Metrics::default().render(&notifier.metrics);
    for line in lines {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }
}

/// A new, unsuppressed event of `flood-demo`.
fn created<'a>(
    event_id: &'a str,
    recipients: &'a [u8],
    admitted: &'a Admitted,
    flood_control: bool,
) -> Created<'a> {
    Created {
        event_id,
        integration_id: "flood-demo",
        recipients,
        admitted,
        flood_control,
        suppressed: false,
        duplicate: false,
    }
}

/// Notify for a new event id with `recipients`, as the websocket does after creating it.
fn notify(notifier: &Notifier, recipients: &str, flood_control: bool) -> String {
    let event_id = uuid::Uuid::now_v7().to_string();
    let admitted = notifier
        .admit(None, Some("Alert"), Some("svc"))
        .expect("admitted");
    notifier
        .after_create(&[created(
            &event_id,
            recipients.as_bytes(),
            &admitted,
            flood_control,
        )])
        .expect("notifications written");
    event_id
}

fn statuses(notifier: &Notifier, event_id: &str) -> Vec<(String, String)> {
    notifier
        .list(event_id)
        .expect("list")
        .iter()
        .map(|n| {
            (
                n["device"]["deviceType"].as_str().unwrap_or("").to_owned(),
                n["status"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn pair(kind: &str, status: &str) -> (String, String) {
    (kind.to_owned(), status.to_owned())
}

#[test]
fn flood_control_suppresses_sms_beyond_the_maximum_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = {
        let (notifier, _queue) = open(dir.path(), policy(""));
        let first = notify(&notifier, r#"["oncall"]"#, true);
        let second = notify(&notifier, r#"["oncall"]"#, true);
        assert_eq!(
            statuses(&notifier, &second),
            [pair("EMAIL", "PENDING"), pair("TEXT_PHONE", "SUPPRESSED")]
        );
        let suppressed = &notifier.list(&second).expect("list")[1];
        assert!(
            suppressed["reason"]
                .as_str()
                .unwrap_or("")
                .contains("flood control"),
            "{suppressed}"
        );
        tokio::runtime::Runtime::new()
            .expect("runtime")
            .block_on(notifier.store.wait_durable())
            .expect("flush");
        first
    };
    // Reopened: the count of the first SMS is still there.
    let (notifier, _queue) = open(dir.path(), policy(""));
    assert_eq!(
        statuses(&notifier, &first),
        [pair("EMAIL", "PENDING"), pair("TEXT_PHONE", "PENDING")]
    );
    let third = notify(&notifier, r#"["oncall"]"#, true);
    assert_eq!(
        statuses(&notifier, &third),
        [pair("EMAIL", "PENDING"), pair("TEXT_PHONE", "SUPPRESSED")]
    );
    assert_eq!(notifier.pending_events().expect("pending").len(), 3);
}

#[test]
fn without_flood_control_or_with_a_wider_limit_everything_goes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (notifier, _queue) = open(
        dir.path(),
        policy("[flood_control]\nmax_notifications = 2\nperiod_secs = 60\n"),
    );
    for _ in 0..3 {
        let event = notify(&notifier, r#"["oncall"]"#, false);
        assert_eq!(
            statuses(&notifier, &event),
            [pair("EMAIL", "PENDING"), pair("TEXT_PHONE", "PENDING")]
        );
    }
    let kinds: Vec<_> = (0..3)
        .map(|_| {
            statuses(&notifier, &notify(&notifier, "oncall", true))[1]
                .1
                .clone()
        })
        .collect();
    assert_eq!(
        kinds,
        ["PENDING", "PENDING", "SUPPRESSED"],
        "two per minute"
    );
}

#[test]
fn form_defaults_groups_filters_idempotence_and_cancel() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (notifier, _queue) = open(dir.path(), policy(""));
    // No recipients on the event: the form's defaults (the group `ops`).
    let by_default = notify(&notifier, "[]", false);
    let listed = notifier.list(&by_default).expect("list");
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0]["group"]["targetName"], "ops");
    assert_eq!(listed[0]["recipient"]["targetName"], "oncall");

    let filtered = notify(
        &notifier,
        r#"[{"targetName": "ops", "devices": ["EMAIL"]}]"#,
        false,
    );
    assert_eq!(statuses(&notifier, &filtered), [pair("EMAIL", "PENDING")]);

    // A resend of the same event changes nothing.
    let admitted = notifier
        .admit(None, Some("Alert"), None)
        .expect("open form");
    notifier
        .after_create(&[created(&filtered, br#"["oncall"]"#, &admitted, true)])
        .expect("idempotent");
    assert_eq!(statuses(&notifier, &filtered), [pair("EMAIL", "PENDING")]);

    assert_eq!(notifier.cancel(&filtered).expect("cancel"), 1);
    assert_eq!(statuses(&notifier, &filtered), [pair("EMAIL", "CANCELLED")]);
    assert_eq!(notifier.cancel(&filtered).expect("again"), 0);
    assert_eq!(notifier.pending_events().expect("pending").len(), 1);

    let nobody = notify(&notifier, r#"["ghost"]"#, true);
    assert!(notifier.list(&nobody).expect("list").is_empty());
    assert!(notifier.list("not-an-id").expect("list").is_empty());
}

#[test]
fn the_documented_defaults() {
    let defaults = policy("");
    assert_eq!(defaults.flood, FloodSettings::default());
    assert_eq!(defaults.delivery.max_attempts, 5);
    assert_eq!(defaults.delivery.retry_initial, Duration::from_secs(1));
    assert_eq!(defaults.delivery.retry_max, Duration::from_secs(60));
    assert!(defaults.delivery.webhooks.is_empty(), "the log deliverer");
    assert_eq!(defaults.alert_rate, None, "the alert rate filter is off");
}

#[test]
fn backoff_doubles_up_to_the_cap() {
    let settings = DeliverySettings {
        retry_initial: Duration::from_millis(100),
        retry_max: Duration::from_millis(350),
        ..DeliverySettings::default()
    };
    let waits: Vec<u128> = (1..=4).map(|n| settings.backoff(n).as_millis()).collect();
    assert_eq!(waits, [100, 200, 350, 350]);
}

#[test]
fn bad_delivery_settings_name_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    for (text, key) in [
        (
            "[notifications.webhooks]\nEMAIL = \"https://example.com/x\"\n",
            "notifications.webhooks.EMAIL",
        ),
        (
            "[notifications.webhooks]\nPAGER = \"http://example.com/x\"\n",
            "notifications.webhooks",
        ),
        (
            "[notifications]\nmax_attempts = 0\n",
            "notifications.max_attempts",
        ),
        (
            "[notifications.webhooks]\nVOICE = \"http://u:secret@example.com/x\"\n",
            "notifications.webhooks.VOICE",
        ),
        (
            "[flood_control]\nperiod_secs = 0\n",
            "flood_control.period_secs",
        ),
    ] {
        let error = crate::config::parse(text, "test.toml", dir.path()).expect_err(text);
        assert!(error.key.starts_with(key), "{text}: {}", error.key);
    }
}

/// Wait (polling, generous deadline) until `check` holds.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn the_log_deliverer_delivers_and_an_unreachable_webhook_fails_after_its_attempts() {
    // A port nobody listens on: bind, note it, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let dir = tempfile::tempdir().expect("tempdir");
    let (notifier, queue) = open(
        dir.path(),
        policy(&format!(
            "[notifications]\nmax_attempts = 2\nretry_initial_ms = 10\nretry_max_ms = 20\n\
             [notifications.webhooks]\nTEXT_PHONE = \"http://127.0.0.1:{port}/sms\"\n"
        )),
    );
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(deliver::run(Arc::clone(&notifier), queue, shutdown));
    let event = notify(&notifier, r#"["oncall"]"#, false);
    eventually("both notifications settled", || {
        statuses(&notifier, &event)
            .iter()
            .all(|(_, status)| status != "PENDING")
    })
    .await;
    let listed = notifier.list(&event).expect("list");
    assert_eq!(listed[0]["status"], "DELIVERED", "{listed:?}");
    assert!(listed[0]["delivered"].is_string());
    assert_eq!(listed[1]["status"], "FAILED", "{listed:?}");
    assert_eq!(listed[1]["attempts"], 2);
    assert!(
        listed[1]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("unreachable"),
        "{listed:?}"
    );
    assert!(notifier.pending_events().expect("pending").is_empty());
    assert_metrics(
        &notifier,
        &[
            "xmcentral_notifications_total{status=\"DELIVERED\",device_type=\"EMAIL\"} 1\n",
            "xmcentral_notifications_total{status=\"FAILED\",device_type=\"TEXT_PHONE\"} 1\n",
            "xmcentral_notifications_total{status=\"PENDING\",device_type=\"TEXT_PHONE\"} 1\n",
            "xmcentral_notification_retries_total 1\n",
        ],
    );
    stop.send(true).expect("stop");
    task.await.expect("delivery task ends");
}

#[test]
fn the_console_sees_each_notification_its_rule_and_the_counts_per_minute() {
    use crate::console::source::Notifications as _;
    let dir = tempfile::tempdir().expect("tempdir");
    let (notifier, _queue) = open(dir.path(), policy(""));
    let started = now_ms();
    let first = notify(&notifier, r#"["oncall"]"#, true);
    let second = notify(&notifier, r#"["oncall"]"#, true);
    assert_eq!(notifier.cancel(&first).expect("cancel"), 2);

    let shown = notifier.of_event(&second).expect("readable");
    let devices: Vec<_> = shown
        .iter()
        .map(|n| (n.device.as_str(), n.status.as_str()))
        .collect();
    assert_eq!(
        devices,
        [
            ("Work Email (EMAIL)", "PENDING"),
            ("Mobile (TEXT_PHONE)", "SUPPRESSED")
        ]
    );
    assert_eq!(shown[0].rule, None);
    let rule = shown[1].rule.as_deref().unwrap_or("");
    assert!(
        rule.contains(
            "more than 1 notification(s) to MOBILE_APP/TEXT_PHONE/VOICE devices within 300 s"
        ),
        "max, device types and period: {rule}"
    );
    assert!(shown
        .iter()
        .all(|n| n.recipient == "oncall" && n.at.is_some()));
    assert!(notifier.of_event("not-an-id").expect("no error").is_empty());
    let unknown = uuid::Uuid::now_v7().to_string();
    assert!(notifier.of_event(&unknown).expect("no error").is_empty());

    let minutes = notifier.per_minute(started - started % 60_000);
    let suppressed: u64 = minutes.iter().map(|m| m.suppressed).sum();
    let delivered: u64 = minutes.iter().map(|m| m.delivered).sum();
    assert_eq!((delivered, suppressed), (0, 1), "{minutes:?}");
    assert!(minutes.iter().all(|m| m.integration == "flood-demo"));
    assert!(
        notifier.per_minute(now_ms() + 120_000).is_empty(),
        "nothing after its start is counted"
    );

    assert_metrics(
        &notifier,
        &[
            "xmcentral_notifications_total{status=\"CANCELLED\",device_type=\"TEXT_PHONE\"} 1\n",
            "xmcentral_notifications_total{status=\"SUPPRESSED\",device_type=\"TEXT_PHONE\"} 1\n",
            "xmcentral_notifications_total{status=\"PENDING\",device_type=\"EMAIL\"} 2\n",
            "xmcentral_notifications_flood_suppressed_total{integration=\"flood-demo\"} 1\n",
        ],
    );
}

/// What creating notifications adds per event on the ack path (a measurement, not a check):
/// `after_create` for 20k events (in batches of 64) to `oncall` (an email and an SMS), with flood control (one
/// window read and written per event) and without, and for events that reach nobody (the
/// directory is consulted and nothing is written). Best of three runs.
/// Run with `cargo test -p central --release --lib -- --ignored --nocapture notification_costs`.
#[test]
#[ignore]
fn notification_costs() {
    const N: usize = 20_000;
    let ids: Vec<String> = (0..N).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    for (what, recipients, flood_control) in [
        ("2 devices, flood control", r#"["oncall"]"#, true),
        ("2 devices, no flood control", r#"["oncall"]"#, false),
        ("nobody reached", r#"["ghost"]"#, false),
    ] {
        let mut best = Duration::MAX;
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let (notifier, _queue) = open(dir.path(), policy(""));
            let admitted = notifier.admit(None, Some("Alert"), None).expect("open");
            let started = Instant::now();
            // In batches of 64, as the websocket hands them over.
            for chunk in ids.chunks(64) {
                let events: Vec<Created<'_>> = chunk
                    .iter()
                    .map(|id| created(id, recipients.as_bytes(), &admitted, flood_control))
                    .collect();
                notifier.after_create(&events).expect("written");
            }
            best = best.min(started.elapsed());
        }
        eprintln!(
            "{what}: {:?} per event ({:.0} events/s)",
            best / N as u32,
            N as f64 / best.as_secs_f64()
        );
    }
}

/// An event as the store keeps it, with or without the alert rate filter's mark.
struct StoredEvent {
    suppressed: bool,
}

impl crate::store::NewEvent for StoredEvent {
    fn request_id(&self) -> &str {
        if self.suppressed {
            "r-suppressed"
        } else {
            "r-plain"
        }
    }

    fn index(&self) -> u32 {
        0
    }

    fn to_json(&self, event_id: &str) -> Vec<u8> {
        let mut event = serde_json::json!({"id": event_id, "status": "ACTIVE"});
        if self.suppressed {
            event["suppressed"] = serde_json::json!({"rule": "Alert Rate Filter", "reason": "x"});
        }
        event.to_string().into_bytes()
    }
}

#[test]
fn a_resend_creates_missing_notifications_unless_the_event_was_suppressed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (notifier, _queue) = open(dir.path(), policy(""));
    let written = notifier
        .store
        .create_batch(
            "agent-01",
            &[
                StoredEvent { suppressed: true },
                StoredEvent { suppressed: false },
            ],
        )
        .expect("events stored");
    let admitted = notifier
        .admit(None, Some("Alert"), Some("svc"))
        .expect("ok");
    let resend = |event_id: &str| {
        notifier
            .after_create(&[Created {
                duplicate: true,
                ..created(event_id, br#"["oncall"]"#, &admitted, false)
            }])
            .expect("written");
    };
    resend(&written[0].event_id);
    assert!(notifier
        .list(&written[0].event_id)
        .expect("list")
        .is_empty());
    resend(&written[1].event_id);
    assert_eq!(notifier.list(&written[1].event_id).expect("list").len(), 2);
}

#[tokio::test]
async fn pending_notifications_are_delivered_after_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let event = {
        // Created, made durable, never delivered (no delivery task ran).
        let (notifier, _queue) = open(dir.path(), policy(""));
        let event = notify(&notifier, r#"["oncall"]"#, false);
        notifier.store.wait_durable().await.expect("flush");
        event
    };
    let (queue_notifier, queue) = open(dir.path(), policy(""));
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(deliver::run(Arc::clone(&queue_notifier), queue, shutdown));
    eventually("resumed deliveries", || {
        statuses(&queue_notifier, &event)
            .iter()
            .all(|(_, status)| status == "DELIVERED")
    })
    .await;
    stop.send(true).expect("stop");
    task.await.expect("delivery task ends");
}
