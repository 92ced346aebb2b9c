//! Notifications end to end, through the real `xmagent` and `xmcentral` binaries: events create
//! notifications for the devices of their recipients (people, groups, device filters, the form's
//! defaults); flood control holds back SMS beyond the default of one per 300 s for integrations
//! that enable it, and keeps counting across a central restart; a sender the form does not
//! permit is refused for good with the reason in the agent's activity stream; a script
//! terminates events by property and their pending notifications are cancelled. Delivery goes
//! to a real HTTP receiver on loopback (the webhook deliverer).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use e2e::*;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

/// The directory every test uses: `oncall` (email, SMS), `lead` (email, voice), the group `ops`
/// holding both, and a plan whose form goes to `ops` and may be sent by `svc` only. No
/// `[flood_control]` table: the defaults apply.
fn directory(receiver: SocketAddr, retry_initial_ms: u64) -> String {
    format!(
        r#"
{ONCALL_PERSON}[[people]]
target_name = "lead"
devices = [
  {{ name = "Work Email", device_type = "EMAIL", address = "lead@example.com" }},
  {{ name = "Desk", device_type = "VOICE", address = "+15550101" }},
]
[[groups]]
target_name = "ops"
members = ["oncall", "lead"]
[[plans]]
name = "Operations"
[[plans.forms]]
name = "Incident Alert"
recipients = ["ops"]
senders = ["svc"]

[notifications]
max_attempts = 3
retry_initial_ms = {retry_initial_ms}
retry_max_ms = {retry_initial_ms}
[notifications.webhooks]
EMAIL = "http://{receiver}/email"
TEXT_PHONE = "http://{receiver}/sms"
VOICE = "http://{receiver}/voice"
"#
    )
}

const INTEGRATIONS: &str = r#"
[[users]]
name = "svc"
roles = ["REST Web Service User", "Agent Administrator"]
password = "svc-password"

[[users]]
name = "intruder"
roles = ["REST Web Service User"]
password = "intruder-password"

[[integrations]]
id = "flood-demo"
action = "create_event"
plan = "Operations"
form = "Incident Alert"
flood_control = true
auth = "url"
authenticating_user = "svc"
url_key = "key-flood-demo"

[[integrations]]
id = "no-flood"
action = "create_event"
plan = "Operations"
form = "Incident Alert"
auth = "url"
authenticating_user = "svc"
url_key = "key-no-flood"

[[integrations]]
id = "by-caller"
action = "create_event"
form = "Incident Alert"
auth = "basic"

[[integrations]]
id = "unknown-form"
action = "create_event"
form = "No Such Form"
auth = "url"
authenticating_user = "svc"
url_key = "key-unknown-form"

[[integrations]]
id = "terminator"
action = "run_script"
form = "Incident Alert"
auth = "url"
authenticating_user = "svc"
url_key = "key-terminator"
script = "{examples}/integrations/terminate-by-property.js"
script_events_of = ["no-flood"]
"#;

/// A webhook receiver: records every POST (path and JSON body) and answers `sms_status` on
/// `/sms`, 200 elsewhere.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<(String, Value)>>>,
    sms_status: Arc<AtomicU16>,
}

impl Receiver {
    async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().expect("receiver addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let sms_status = Arc::new(AtomicU16::new(200));
        let (log, status) = (Arc::clone(&received), Arc::clone(&sms_status));
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (log, status) = (Arc::clone(&log), Arc::clone(&status));
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (log, status) = (Arc::clone(&log), Arc::clone(&status));
                        async move {
                            let path = request.uri().path().to_owned();
                            let body = request
                                .into_body()
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let code = if path == "/sms" {
                                status.load(Ordering::SeqCst)
                            } else {
                                200
                            };
                            log.lock().unwrap().push((path, value));
                            let mut response = hyper::Response::new(Full::new(Bytes::new()));
                            *response.status_mut() =
                                hyper::StatusCode::from_u16(code).expect("status code");
                            Ok::<_, Infallible>(response)
                        }
                    },
                );
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        Receiver {
            addr,
            received,
            sms_status,
        }
    }

    fn count(&self, path: &str) -> usize {
        let received = self.received.lock().unwrap();
        received.iter().filter(|(p, _)| p == path).count()
    }
}

struct System {
    dir: tempfile::TempDir,
    central: Node,
    central_port: u16,
    agent: Node,
    receiver: Receiver,
}

fn write_central_config(
    dir: &Path,
    port: u16,
    receiver: SocketAddr,
    retry_initial_ms: u64,
    extra: &str,
) {
    let path = central_config(dir, port);
    let mut text = std::fs::read_to_string(&path).expect("read central config");
    text.push_str(&directory(receiver, retry_initial_ms));
    text.push_str(extra);
    std::fs::write(&path, text).expect("write central config");
}

fn run_central(dir: &Path) -> Node {
    let config = dir.join("central.toml");
    Node::start(
        &binary("xmcentral"),
        &["run", "--config", config.to_str().unwrap()],
    )
}

/// Central (on a fixed free port, so it can come back on it), receiver and agent.
async fn start(retry_initial_ms: u64) -> System {
    start_with(retry_initial_ms, "").await
}

/// [`start`] with `extra` appended to the central's config.
async fn start_with(retry_initial_ms: u64, extra: &str) -> System {
    let dir = tempfile::tempdir().expect("tempdir");
    let receiver = Receiver::start().await;
    let central_port = free_port();
    write_central_config(
        dir.path(),
        central_port,
        receiver.addr,
        retry_initial_ms,
        extra,
    );
    let central = run_central(dir.path());
    let integrations = INTEGRATIONS.replace("{examples}", EXAMPLES);
    let agent = start_agent(&agent_config(dir.path(), central_port, &integrations));
    System {
        dir,
        central,
        central_port,
        agent,
        receiver,
    }
}

fn admin() -> String {
    basic(CENTRAL_USER.0, CENTRAL_USER.1)
}

/// GET a central REST path as the admin, insisting on 200.
async fn central_get(central: SocketAddr, path: &str) -> Value {
    get_json(central, path, CENTRAL_USER).await
}

/// POST `body` to a URL-key integration (key `key-{integration}`) and wait for its event.
async fn event_through(
    agent: SocketAddr,
    central: SocketAddr,
    integration: &str,
    body: &Value,
) -> Value {
    let request_id = accepted(agent, integration, &body.to_string()).await;
    eventually(WAIT, &format!("event of {request_id}"), || async {
        central_events(central, &request_id)
            .await
            .into_iter()
            .next()
    })
    .await
}

/// The event's notifications once none is PENDING any more.
async fn settled(central: SocketAddr, event_id: &str) -> Vec<Value> {
    let path = format!("/api/xm/1/events/{event_id}/notifications");
    eventually(
        WAIT,
        &format!("notifications of {event_id} settled"),
        || async {
            let listed = central_get(central, &path).await;
            let data = listed["data"].as_array().cloned().unwrap_or_default();
            let done = !data.is_empty() && data.iter().all(|n| n["status"] != "PENDING");
            done.then_some(data)
        },
    )
    .await
}

/// `(deviceType, status)` of each notification.
fn kinds(notifications: &[Value]) -> Vec<(String, String)> {
    notifications
        .iter()
        .map(|n| {
            (
                n["device"]["deviceType"].as_str().unwrap_or("?").to_owned(),
                n["status"].as_str().unwrap_or("?").to_owned(),
            )
        })
        .collect()
}

fn pair(kind: &str, status: &str) -> (String, String) {
    (kind.to_owned(), status.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn flood_control_delivers_one_sms_per_period_by_default_and_counts_across_a_restart() {
    let sys = start(1_000).await;
    let (agent, central) = (sys.agent.addr, sys.central.addr);
    let body = json!({"properties": {"summary": "disk full"}, "recipients": ["oncall"]});
    let mut events = Vec::new();
    for _ in 0..3 {
        let event = event_through(agent, central, "flood-demo", &body).await;
        assert_eq!(event["floodControl"], true, "{event}");
        assert!(
            event.get("suppressed").is_none(),
            "the alert rate filter is off by default"
        );
        assert_eq!(event["plan"], json!({"name": "Operations"}));
        events.push(event["id"].as_str().unwrap().to_owned());
    }
    let mut all = Vec::new();
    for event in &events {
        all.extend(kinds(&settled(central, event).await));
    }
    let count = |kind: &str, status: &str| all.iter().filter(|k| **k == pair(kind, status)).count();
    assert_eq!(count("TEXT_PHONE", "DELIVERED"), 1, "{all:?}");
    assert_eq!(count("TEXT_PHONE", "SUPPRESSED"), 2, "{all:?}");
    assert_eq!(count("EMAIL", "DELIVERED"), 3, "{all:?}");
    assert_eq!(all.len(), 6);
    // The first event's SMS went out; the receiver saw exactly what was delivered.
    assert_eq!(
        kinds(&settled(central, &events[0]).await)[1],
        pair("TEXT_PHONE", "DELIVERED")
    );
    assert_eq!(
        (sys.receiver.count("/sms"), sys.receiver.count("/email")),
        (1, 3)
    );
    let suppressed = &settled(central, &events[1]).await[1];
    assert!(
        suppressed["reason"]
            .as_str()
            .unwrap_or("")
            .contains("300 s"),
        "the documented default period: {suppressed}"
    );

    // Restart the central on the same port: the count of the delivered SMS is kept.
    let System {
        dir,
        central: node,
        central_port,
        agent: agent_node,
        receiver,
    } = sys;
    assert_eq!(node.terminate(), Some(0));
    let node = run_central(dir.path());
    assert_eq!(node.addr.port(), central_port);
    let central = node.addr;
    let event = event_through(agent_node.addr, central, "flood-demo", &body).await;
    let after = kinds(&settled(central, event["id"].as_str().unwrap()).await);
    assert_eq!(
        after,
        [pair("EMAIL", "DELIVERED"), pair("TEXT_PHONE", "SUPPRESSED")]
    );
    assert_eq!(receiver.count("/sms"), 1, "no second SMS after the restart");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_flood_control_all_six_are_delivered() {
    let sys = start(1_000).await;
    let (agent, central) = (sys.agent.addr, sys.central.addr);
    let body = json!({"properties": {"summary": "disk full"}, "recipients": ["oncall"]});
    let mut all = Vec::new();
    for _ in 0..3 {
        let event = event_through(agent, central, "no-flood", &body).await;
        assert_eq!(event["floodControl"], false);
        all.extend(kinds(
            &settled(central, event["id"].as_str().unwrap()).await,
        ));
    }
    assert_eq!(all.len(), 6);
    assert!(
        all.iter().all(|(_, status)| status == "DELIVERED"),
        "{all:?}"
    );
    assert_eq!(
        (sys.receiver.count("/sms"), sys.receiver.count("/email")),
        (3, 3)
    );
    let sms = {
        let received = sys.receiver.received.lock().unwrap();
        received
            .iter()
            .find(|(p, _)| p == "/sms")
            .map(|(_, v)| v.clone())
    };
    let sms = sms.expect("an SMS was posted");
    assert_eq!(sms["recipient"], "oncall");
    assert_eq!(sms["device"]["address"], "+15550100");
    assert_eq!(sms["properties"]["summary"], "disk full", "{sms}");
    assert_eq!(sms["priority"], "MEDIUM");
}

#[tokio::test(flavor = "multi_thread")]
async fn recipients_resolve_through_groups_device_filters_and_form_defaults() {
    let sys = start(1_000).await;
    let (agent, central) = (sys.agent.addr, sys.central.addr);
    // Basic authentication: the caller (svc) is the sender.
    let auth = basic("svc", "svc-password");
    let post = |body: Value| {
        let auth = auth.clone();
        async move {
            let answer = trigger(
                agent,
                "by-caller",
                "",
                &[("authorization", &auth)],
                &body.to_string(),
            )
            .await;
            assert_eq!(answer.status, 202);
            let request_id = answer.json()["requestId"].as_str().unwrap().to_owned();
            eventually(WAIT, "event created", || async {
                central_events(central, &request_id)
                    .await
                    .into_iter()
                    .next()
            })
            .await
        }
    };
    let filtered = post(json!({"properties": {"summary": "y"}, "recipients": [{"targetName": "ops", "devices": ["EMAIL"]}]})).await;
    let notifications = settled(central, filtered["id"].as_str().unwrap()).await;
    let who: Vec<_> = notifications
        .iter()
        .map(|n| {
            (
                n["recipient"]["targetName"].clone(),
                n["group"]["targetName"].clone(),
            )
        })
        .collect();
    assert_eq!(
        who,
        [
            (json!("oncall"), json!("ops")),
            (json!("lead"), json!("ops"))
        ]
    );
    assert_eq!(
        kinds(&notifications),
        [pair("EMAIL", "DELIVERED"), pair("EMAIL", "DELIVERED")]
    );

    // No recipients on the event: the form's default (the group ops), every device.
    let by_default = post(json!({"properties": {"summary": "x"}})).await;
    let notifications = settled(central, by_default["id"].as_str().unwrap()).await;
    assert_eq!(notifications.len(), 4, "{notifications:?}");
    assert_eq!(notifications[3]["device"]["deviceType"], "VOICE");
    assert_eq!(notifications[3]["device"]["name"], "Desk");

    // The event with its recipients embedded, and the report's time filters.
    let embedded = central_get(
        central,
        &format!(
            "/api/xm/1/events/{}?embed=properties,recipients",
            filtered["id"].as_str().unwrap()
        ),
    )
    .await;
    assert_eq!(
        embedded["recipients"],
        json!({"count": 1, "total": 1, "data": [
            {"targetName": "ops", "recipientType": "GROUP", "devices": ["EMAIL"]}]})
    );
    let since = |from: &str| {
        let path = format!("/api/xm/1/events?from={from}");
        async move { central_get(central, &path).await["total"].clone() }
    };
    assert_eq!(since("2000-01-01T00:00:00Z").await, 2);
    assert_eq!(since("2999-01-01T00:00:00Z").await, 0);

    // The directory reads, in the xMatters shapes.
    let people = central_get(central, "/api/xm/1/people?limit=1").await;
    assert_eq!(
        (people["count"].clone(), people["total"].clone()),
        (json!(1), json!(2))
    );
    assert!(people["links"]["next"]
        .as_str()
        .unwrap()
        .contains("offset=1"));
    let devices = central_get(central, "/api/xm/1/people/oncall/devices").await;
    assert_eq!(devices["data"][1]["deviceType"], "TEXT_PHONE");
    assert_eq!(devices["data"][1]["phoneNumber"], "+15550100");
    let groups = central_get(central, "/api/xm/1/groups").await;
    assert_eq!(groups["data"][0]["members"]["total"], 2);
    let forms = central_get(central, "/api/xm/1/plans/Operations/forms").await;
    assert_eq!(forms["data"][0]["name"], "Incident Alert");
    assert_eq!(
        central_get(central, "/api/xm/1/plans").await["data"][0]["name"],
        "Operations"
    );
    for missing in ["/api/xm/1/people/ghost", "/api/xm/1/plans/Nope/forms"] {
        let answer = http(central, "GET", missing, &[("authorization", &admin())], "")
            .await
            .unwrap();
        assert_eq!(answer.status, 404, "{missing}");
    }
    // SIGHUP reloads the directory.
    let config = sys.dir.path().join("central.toml");
    let mut text = std::fs::read_to_string(&config).expect("read config");
    text.push_str("\n[[people]]\ntarget_name = \"newbie\"\n");
    std::fs::write(&config, text).expect("write config");
    sys.central.signal("HUP");
    eventually(WAIT, "newbie after SIGHUP", || async {
        let path = "/api/xm/1/people/newbie";
        let answer = http(central, "GET", path, &[("authorization", &admin())], "")
            .await
            .ok()?;
        (answer.status == 200).then_some(())
    })
    .await;
    let anonymous = http(central, "GET", "/api/xm/1/people", &[], "")
        .await
        .unwrap();
    assert_eq!(anonymous.status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sender_without_permission_or_an_unknown_form_is_refused_for_good() {
    let sys = start(1_000).await;
    let agent = sys.agent.addr;
    let auth = basic("intruder", "intruder-password");
    let refused = trigger(agent, "by-caller", "", &[("authorization", &auth)], "{}").await;
    assert_eq!(
        refused.status, 202,
        "the agent accepts; the central refuses"
    );
    let intruder_request = refused.json()["requestId"].as_str().unwrap().to_owned();
    let unknown_request = accepted(agent, "unknown-form", "{}").await;

    let svc = ("svc", "svc-password");
    for (integration, request_id, reason) in [
        (
            "by-caller",
            &intruder_request,
            "sender `intruder` does not have permission to send form `Incident Alert`",
        ),
        (
            "unknown-form",
            &unknown_request,
            "no form named `No Such Form`",
        ),
    ] {
        let entry = eventually(WAIT, &format!("{integration} refused"), || async {
            let logs = get_json(
                agent,
                &format!("/api/xm/1/integrations/{integration}/logs"),
                svc,
            )
            .await;
            logs["data"]
                .as_array()
                .and_then(|entries| {
                    entries
                        .iter()
                        .find(|e| e["requestId"] == request_id.as_str())
                        .cloned()
                })
                .filter(|entry| entry["status"] == "FAILED")
        })
        .await;
        let text = entry["reason"].as_str().unwrap_or("");
        assert!(text.contains(reason), "{integration}: {entry}");
        assert!(text.contains("403"), "{integration}: {entry}");
    }
    let dead = get_json(agent, "/api/agent/1/queue?state=dead", svc).await;
    assert!(
        dead.to_string().contains("does not have permission"),
        "{dead}"
    );
    assert!(central_events(sys.central.addr, &intruder_request)
        .await
        .is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_script_terminates_events_by_property_and_pending_notifications_are_cancelled() {
    // SMS deliveries fail and are retried only after a minute: they stay PENDING meanwhile.
    let sys = start(60_000).await;
    sys.receiver.sms_status.store(503, Ordering::SeqCst);
    let (agent, central) = (sys.agent.addr, sys.central.addr);
    let body = json!({"properties": {"host": "db-9"}, "recipients": ["oncall"]});
    let event = event_through(agent, central, "no-flood", &body).await;
    let id = event["id"].as_str().unwrap().to_owned();
    let path = format!("/api/xm/1/events/{id}/notifications");
    let failed_once = eventually(WAIT, "the SMS failed once", || async {
        let data = central_get(central, &path).await["data"].clone();
        (data[0]["status"] == "DELIVERED" && data[1]["attempts"] == 1).then_some(data)
    })
    .await;
    assert_eq!(failed_once[1]["status"], "PENDING");
    assert!(
        failed_once[1]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("503"),
        "{failed_once}"
    );

    let script_request =
        accepted(agent, "terminator", r#"{"name": "host", "value": "db-9"}"#).await;
    let event = eventually(WAIT, "the event terminated", || async {
        let events = central_events(central, event["requestId"].as_str().unwrap()).await;
        events
            .into_iter()
            .next()
            .filter(|e| e["status"] == "TERMINATED")
    })
    .await;
    assert_eq!(event["id"], id.as_str());
    let after = central_get(central, &path).await["data"].clone();
    assert_eq!(after[0]["status"], "DELIVERED");
    assert_eq!(after[1]["status"], "CANCELLED", "{after}");
    assert!(!script_request.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_alert_rate_filter_suppresses_events_to_the_same_recipients_when_configured() {
    let sys = start_with(1_000, "\n[alert_rate_filter]\nmax_events_per_minute = 2\n").await;
    let (agent, central) = (sys.agent.addr, sys.central.addr);
    let to = |who: &str| json!({"properties": {"summary": "flapping"}, "recipients": [who]});
    let mut events = Vec::new();
    for _ in 0..3 {
        events.push(event_through(agent, central, "no-flood", &to("oncall")).await);
    }
    assert!(events[0].get("suppressed").is_none() && events[1].get("suppressed").is_none());
    let suppressed = &events[2];
    assert_eq!(
        suppressed["suppressed"]["rule"], "Alert Rate Filter",
        "{suppressed}"
    );
    assert!(
        suppressed["suppressed"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("more than 2 event(s) from integration `no-flood`"),
        "{suppressed}"
    );
    let path = format!(
        "/api/xm/1/events/{}/notifications",
        suppressed["id"].as_str().unwrap()
    );
    assert_eq!(
        central_get(central, &path).await["total"],
        0,
        "a suppressed event notifies nobody"
    );
    assert_eq!(
        settled(central, events[1]["id"].as_str().unwrap())
            .await
            .len(),
        2
    );
    // Other recipients are counted apart.
    let other = event_through(agent, central, "no-flood", &to("lead")).await;
    assert!(other.get("suppressed").is_none(), "{other}");
}
